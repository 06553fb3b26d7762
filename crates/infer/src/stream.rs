//! Generated ids → text, as it comes.

use crate::model::Vocab;
use yuanli_tokenizer::StreamDecoder;

/// Turns generated ids into text as they come — only whole UTF-8 characters (a character may
/// span several byte-level tokens) — and watches for stop strings: text that could still
/// become a stop string is held back, and a stop string ends the text before it.
pub struct TextStream<'m> {
    vocab: &'m Vocab,
    decoder: Option<StreamDecoder<'m>>,
    text: String,
    emitted: usize,
    stops: Vec<String>,
}

impl<'m> TextStream<'m> {
    /// A stream over `vocab`, stopping at any of `stops` (empty strings are ignored).
    pub fn new(vocab: &'m Vocab, stops: &[String]) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let decoder = match vocab {
            Vocab::Bpe(t) => Some(t.stream_decoder()),
            Vocab::Chars(_) => None,
        };
        TextStream { vocab, decoder, text: String::new(), emitted: 0, stops }
    }

    /// Adds a token; returns the text that is now safe to show, and whether a stop string
    /// appeared (the text is cut before it).
    pub fn push(&mut self, id: u32) -> (String, bool) {
        match (&mut self.decoder, self.vocab) {
            (Some(d), _) => self.text.push_str(&d.push(id).unwrap_or_default()),
            (None, Vocab::Chars(c)) => self.text.extend(c.get(id as usize)),
            (None, Vocab::Bpe(_)) => {}
        }
        if let Some(cut) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(cut);
            let out = self.text.get(self.emitted..).unwrap_or_default().to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        // Hold back a tail that could still become a stop string.
        let hold = self.stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    /// The rest of the text (an incomplete character as U+FFFD).
    pub fn finish(&mut self) -> String {
        if let Some(d) = &mut self.decoder {
            self.text.push_str(&d.finish());
        }
        let out = self.text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = self.text.len();
        out
    }

    /// All the text so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_the_text_and_held_back_text_is_released() {
        let vocab = Vocab::Chars("ab<|e".chars().collect());
        let stops = vec!["<|e".to_string()];
        let mut s = TextStream::new(&vocab, &stops);
        let mut shown = String::new();
        for id in [0u32, 1, 0, 2, 3] {
            let (piece, stop) = s.push(id);
            shown.push_str(&piece);
            assert!(!stop);
        }
        assert_eq!(shown, "aba", "'<|' is held back: it may begin the stop string");
        let (piece, stop) = s.push(4);
        assert!(stop);
        shown.push_str(&piece);
        assert_eq!(shown, "aba");
        // Without a stop string the held-back tail comes out at the end.
        let mut s = TextStream::new(&vocab, &stops);
        let mut shown: String = [0u32, 2, 3].iter().map(|&id| s.push(id).0).collect();
        shown.push_str(&s.finish());
        assert_eq!(shown, "a<|");
    }
}
