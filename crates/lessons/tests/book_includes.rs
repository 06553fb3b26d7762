//! The book shows lesson code by `{{#include path:anchor}}`, never pasted: every include in
//! `docs/book/src` must name an existing file and, if given, an anchor that exists in it.

use std::path::{Path, PathBuf};

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            markdown_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "md") {
            out.push(p);
        }
    }
}

#[test]
fn every_book_include_resolves_to_a_file_and_anchor() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/book/src");
    let mut files = Vec::new();
    markdown_files(&src, &mut files);
    assert!(!files.is_empty(), "no chapters under {}", src.display());
    let mut checked = 0;
    for md in files {
        let text = std::fs::read_to_string(&md).unwrap();
        for (i, _) in text.match_indices("{{#include ") {
            let rest = &text[i + "{{#include ".len()..];
            let end = rest.find("}}").unwrap_or_else(|| panic!("{}: unterminated include", md.display()));
            let spec = rest[..end].trim();
            let (path, anchor) = match spec.split_once(':') {
                Some((p, a)) => (p, Some(a)),
                None => (spec, None),
            };
            let target = md.parent().unwrap().join(path);
            let code =
                std::fs::read_to_string(&target).unwrap_or_else(|e| panic!("{}: include {path}: {e}", md.display()));
            if let Some(a) = anchor.filter(|a| !a.chars().all(|c| c.is_ascii_digit())) {
                assert!(
                    code.contains(&format!("ANCHOR: {a}")) && code.contains(&format!("ANCHOR_END: {a}")),
                    "{}: anchor {a} not found in {path}",
                    md.display()
                );
            }
            checked += 1;
        }
    }
    println!("{checked} includes checked");
}
