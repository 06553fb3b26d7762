//! # yuanli-tokenizer — byte-level BPE from first principles
//!
//! Text goes into a language model as integers. A byte-level BPE tokenizer gets them like this:
//!
//! 1. **pre-tokenize**: cut the text into chunks with a regex ([`pretokenize`]), so that
//!    tokens never straddle, say, a word and the space after it;
//! 2. start from the chunk's **bytes** (256 possible tokens, so any text can be encoded);
//! 3. apply the learned **merges**: pairs of adjacent tokens that become one token, in the
//!    order they were learned ([`Tokenizer`]).
//!
//! Training ([`train`]) learns the merges: count the adjacent pairs in a corpus, merge the most
//! frequent, repeat. Decoding is concatenating the tokens' bytes.
//!
//! The crate reads and writes yuanli's own JSON format, tiktoken's `.tiktoken` rank files and
//! Hugging Face's `tokenizer.json` ([`formats`]), and encodes GPT-2's vocabulary exactly as
//! tiktoken does. It does not depend on the tensor engine.
//!
//! ```
//! use yuanli_tokenizer::{train, Pattern, SpecialMode, TrainOptions};
//! let text = "the cat sat on the mat; the cat ate the rat";
//! let opts = TrainOptions { vocab_size: 270, pattern: Pattern::Gpt2, specials: vec!["<|endoftext|>".into()] };
//! let tok = train::train(&[text], &opts, &mut |_| {}).unwrap();
//! let ids = tok.encode("the cat<|endoftext|>", SpecialMode::Allow).unwrap();
//! assert_eq!(tok.decode(&ids).unwrap(), "the cat<|endoftext|>");
//! ```

pub mod byte_level;
pub mod error;
pub mod formats;
pub mod pretokenize;
pub mod tokenizer;
pub mod train;

pub use error::{Result, TokenizerError};
pub use pretokenize::{Pattern, Splitter, GPT2_PATTERN, GPT4_PATTERN};
pub use tokenizer::{SpecialMode, StreamDecoder, Tokenizer, NO_TOKEN};
pub use train::{Progress, TrainOptions};
