//! Splitting a multi-document YAML file into its documents, as the YAML parser would, without
//! parsing it: document markers stand at column 0 (a `---` or `...` there cannot be inside a
//! scalar), which is all it takes.

use memchr::memmem;

/// One document of the file: its text from its `---` (or the file's start) to the next
/// document's, and the line its content starts at.
pub(super) struct Document<'t> {
    pub text: &'t str,
    /// Where the document's text starts in the file (1-based).
    pub first_line: usize,
    /// Where its content starts (its `---` line when it has none), for messages.
    pub line: usize,
}

/// A place in the text: a byte offset, and the number of the line that starts there.
#[derive(Clone, Copy)]
struct Position {
    offset: usize,
    line: usize,
}

/// The document being split off.
struct OpenDocument {
    /// Where its text starts.
    start: Position,
    /// The line its content starts at, once there is content.
    content_line: Option<usize>,
}

/// Splits `text` into the documents the YAML parser would read.
pub(super) fn documents(text: &str) -> Vec<Document<'_>> {
    fn content(line: &str) -> bool {
        let line = line.trim_start();
        !line.is_empty() && !line.starts_with('#')
    }
    let mut documents = Vec::new();
    let mut current: Option<OpenDocument> = None;
    // Where a document without a `---` would start: the file's start, or after a `...`.
    let mut implicit = Position { offset: 0, line: 1 };
    let mut close = |current: Option<OpenDocument>, end: usize| {
        if let Some(document) = current {
            documents.push(Document {
                text: &text[document.start.offset..end],
                first_line: document.start.line,
                line: document.content_line.unwrap_or(document.start.line),
            });
        }
    };
    let mut at = Position { offset: 0, line: 1 };
    while at.offset < text.len() {
        // Most lines are inside a document whose content has started: only a marker there
        // matters, and a marker starts with `---` or `...`.
        let in_content = current.as_ref().is_some_and(|d| d.content_line.is_some());
        if in_content && !maybe_marker(&text.as_bytes()[at.offset..]) {
            at = next_maybe_marker(text.as_bytes(), at);
            continue;
        }
        let end = text[at.offset..]
            .find('\n')
            .map_or(text.len(), |found| at.offset + found + 1);
        let line = &text[at.offset..end];
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare
            .strip_prefix("---")
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if let Some(rest) = marker {
            close(current.take(), at.offset);
            current = Some(OpenDocument {
                start: at,
                content_line: content(rest).then_some(at.line),
            });
        } else if bare == "..." {
            close(current.take(), end);
            implicit = Position {
                offset: end,
                line: at.line + 1,
            };
        } else if content(bare) {
            match &mut current {
                Some(document) => {
                    document.content_line.get_or_insert(at.line);
                }
                None => {
                    current = Some(OpenDocument {
                        start: implicit,
                        content_line: Some(at.line),
                    });
                }
            }
        }
        at = Position {
            offset: end,
            line: at.line + 1,
        };
    }
    close(current, text.len());
    documents
}

/// From `from`, the start of a line that is not a marker, to the start of the next line
/// that may be one (or the end of the text). This walks the whole 11 MB of a
/// 10,000-service file on every reload, so it uses memchr's vectorized search rather than a
/// line at a time (5 ms).
fn next_maybe_marker(text: &[u8], from: Position) -> Position {
    let rest = &text[from.offset..];
    // `...` markers are rare: look for one only before the next `---`, so every byte is
    // searched once however many documents there are.
    let dashes = memmem::find(rest, b"\n---").unwrap_or(rest.len());
    let marker = memmem::find(&rest[..dashes], b"\n...").unwrap_or(dashes);
    let next = (from.offset + marker + 1).min(text.len());
    Position {
        offset: next,
        line: from.line + memchr::memchr_iter(b'\n', &text[from.offset..next]).count(),
    }
}

/// The line may be a document marker (`---` or `...`; what follows decides).
fn maybe_marker(line: &[u8]) -> bool {
    line.starts_with(b"---") || line.starts_with(b"...")
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::documents;
    use crate::config::fixtures::XorShift;

    #[test]
    fn documents_are_split_where_the_parser_splits_them() {
        // Implicit first document, comments, an empty document, content on the marker line,
        // an explicit end, and a trailing empty document.
        let text = "# header\na: 1\n---\n# note\n\nb: 2\n---\n--- {c: 3}\n...\n---\nd: 4\n---\n";
        let docs = documents(text);
        let lines: Vec<usize> = docs.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 6, 7, 8, 11, 12]);
        let texts: Vec<&str> = docs.iter().map(|d| d.text).collect();
        assert_eq!(
            texts,
            [
                "# header\na: 1\n",
                "---\n# note\n\nb: 2\n",
                "---\n",
                "--- {c: 3}\n...\n",
                "---\nd: 4\n",
                "---\n"
            ]
        );
        // The whole file parses into as many documents, in the same order.
        let mut parsed = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            parsed.push(serde_json::Value::deserialize(doc).expect("valid YAML"));
        }
        let one_by_one: Vec<serde_json::Value> = docs
            .iter()
            .map(|d| {
                serde_json::Value::deserialize(
                    serde_yaml_ng::Deserializer::from_str(d.text)
                        .next()
                        .unwrap(),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(parsed, one_by_one);
        assert_eq!(
            documents("---\nkind: Node\n")
                .iter()
                .map(|d| d.line)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert!(documents("# nothing\n").is_empty());
    }

    /// Where a document is in the text: its bytes, the line its text starts at and the line
    /// its content starts at.
    #[derive(Debug, PartialEq)]
    struct Span {
        start: usize,
        end: usize,
        first_line: usize,
        line: usize,
    }

    /// `documents` as it was written first, a line at a time.
    fn documents_line_by_line(text: &str) -> Vec<Span> {
        fn content(line: &str) -> bool {
            let line = line.trim_start();
            !line.is_empty() && !line.starts_with('#')
        }
        struct Open {
            start: usize,
            first_line: usize,
            line: Option<usize>,
        }
        let mut documents = Vec::new();
        let mut current: Option<Open> = None;
        let (mut implicit_start, mut implicit_line) = (0, 1);
        let mut offset = 0;
        let mut close = |current: Option<Open>, end: usize| {
            if let Some(open) = current {
                documents.push(Span {
                    start: open.start,
                    end,
                    first_line: open.first_line,
                    line: open.line.unwrap_or(open.first_line),
                });
            }
        };
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let number = i + 1;
            let bare = line.trim_end_matches(['\n', '\r']);
            let marker = bare
                .strip_prefix("---")
                .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
            if let Some(rest) = marker {
                close(current.take(), offset);
                current = Some(Open {
                    start: offset,
                    first_line: number,
                    line: content(rest).then_some(number),
                });
            } else if bare == "..." {
                close(current.take(), offset + line.len());
                (implicit_start, implicit_line) = (offset + line.len(), number + 1);
            } else if content(bare) {
                match &mut current {
                    Some(open) => {
                        open.line.get_or_insert(number);
                    }
                    None => {
                        current = Some(Open {
                            start: implicit_start,
                            first_line: implicit_line,
                            line: Some(number),
                        });
                    }
                }
            }
            offset += line.len();
        }
        close(current, text.len());
        documents
    }
    #[test]
    fn documents_are_split_as_a_line_at_a_time_splits_them() {
        // Lines that are markers, look like them, or are content, in lengths that put them
        // on every side of the 64-byte blocks the splitter reads.
        let lines = [
            "---",
            "--- a: 1",
            "---x",
            "--",
            "-",
            "- a",
            "...",
            "....",
            ".",
            "a: 1",
            "# c",
            "",
            "  ---",
            "\r",
            "---\r",
            "...\r",
            "long: 0123456789012345678901234567890123456789",
        ];
        let mut random = XorShift(0xd0c5_5eed_0b10_c4e5);
        for round in 0..3000 {
            let mut text = String::new();
            for _ in 0..random.below(40) {
                text.push_str(lines[random.below(lines.len())]);
                if !random.chance(30) {
                    text.push('\n');
                }
            }
            let split: Vec<Span> = documents(&text)
                .iter()
                .map(|d| {
                    let start = d.text.as_ptr() as usize - text.as_ptr() as usize;
                    Span {
                        start,
                        end: start + d.text.len(),
                        first_line: d.first_line,
                        line: d.line,
                    }
                })
                .collect();
            assert_eq!(
                split,
                documents_line_by_line(&text),
                "round {round}: {text:?}"
            );
        }
    }
}
