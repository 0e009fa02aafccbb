//! Line numbers for JSON pointers into the contract files.
//!
//! The YAML and JSON parsers the codegen uses give values without spans, so
//! one forward pass over the text records the line of every mapping key and
//! sequence item of a block-style document (which is how `specs/` is
//! written). A pointer into a flow collection (`{ $ref: … }`) or a scalar
//! resolves to the line of its nearest recorded ancestor, which is the line a
//! reader would look at.

use std::collections::BTreeMap;

use crate::diagnostics::escape_token;

/// Line and column (1-based) of every pointer the pass could place.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    lines: BTreeMap<String, (usize, usize)>,
}

impl LineIndex {
    /// Indexes a block-style YAML document or a pretty-printed JSON document.
    pub fn new(text: &str) -> Self {
        let mut lines = BTreeMap::new();
        lines.insert(String::new(), (1, 1));
        // Open containers: (indent of the entry, reference token, sequence index when a sequence item).
        let mut stack: Vec<Entry> = Vec::new();
        let mut block_scalar_indent: Option<usize> = None;
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let content = raw.trim_start();
            let indent = raw.len() - content.len();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            if let Some(bi) = block_scalar_indent {
                if indent > bi {
                    continue;
                }
                block_scalar_indent = None;
            }
            let (item_indent, rest) = if content == "-" || content.starts_with("- ") {
                push_item(&mut stack, indent);
                lines.entry(pointer_of(&stack)).or_insert((line_no, indent + 1));
                let rest = content[1..].trim_start();
                (indent + (content.len() - rest.len()), rest)
            } else {
                (indent, content)
            };
            let Some((key, value)) = split_key(rest) else { continue };
            while stack.last().is_some_and(|e| e.indent >= item_indent) {
                stack.pop();
            }
            stack.push(Entry { indent: item_indent, token: key, seq: None });
            lines.entry(pointer_of(&stack)).or_insert((line_no, item_indent + 1));
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                block_scalar_indent = Some(item_indent);
            }
        }
        Self { lines }
    }

    /// The line of `pointer`, or of its nearest indexed ancestor.
    pub fn line_of(&self, pointer: &str) -> usize {
        self.position_of(pointer).0
    }

    /// (line, column) of `pointer`'s key, or of its nearest indexed ancestor.
    pub fn position_of(&self, pointer: &str) -> (usize, usize) {
        let mut p = pointer;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    indent: usize,
    token: String,
    seq: Option<usize>,
}

/// A `- ` at `indent`: the next item of the sequence open at that indent, or
/// the first item of a new one (possibly indentless, under a key at the
/// same indent).
fn push_item(stack: &mut Vec<Entry>, indent: usize) {
    while stack.last().is_some_and(|e| e.indent > indent) {
        stack.pop();
    }
    let index = match stack.last() {
        Some(e) if e.indent == indent && e.seq.is_some() => {
            let next = e.seq.map_or(0, |i| i + 1);
            stack.pop();
            next
        }
        _ => 0,
    };
    stack.push(Entry { indent, token: index.to_string(), seq: Some(index) });
}

fn pointer_of(stack: &[Entry]) -> String {
    stack.iter().fold(String::new(), |mut acc, e| {
        acc.push('/');
        acc.push_str(&escape_token(&e.token));
        acc
    })
}

/// `key: value` (YAML) or `"key": value` (JSON) → (key, value).
fn split_key(content: &str) -> Option<(String, &str)> {
    let (key, rest) = if let Some(q @ ('"' | '\'')) = content.chars().next() {
        let end = content[1..].find(q)? + 1;
        (content[1..end].to_string(), content[end + 1..].trim_start())
    } else {
        if content.starts_with(['{', '[', '}', ']']) {
            return None;
        }
        let colon = content.find(": ").or_else(|| content.strip_suffix(':').map(str::len))?;
        (content[..colon].trim_end().to_string(), &content[colon..])
    };
    let value = rest.strip_prefix(':')?;
    Some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
openapi: 3.0.3
paths:
  /api/v1/agents/{agent_id}:
    get:
      description: |
        text: that looks like a key
      parameters:
        - $ref: '#/components/parameters/AgentId'
        - name: limit
          in: query
      responses:
        '200': { $ref: '#/x' }
components:
  schemas:
    A:
      required:
      - a
      - b
      properties:
        a: {type: string}
";

    #[test]
    fn mapping_keys_sequence_items_and_quoted_keys_get_their_lines() {
        let idx = LineIndex::new(YAML);
        assert_eq!(idx.line_of(""), 1);
        assert_eq!(idx.line_of("/paths/~1api~1v1~1agents~1{agent_id}/get"), 4);
        assert_eq!(idx.line_of("/paths/~1api~1v1~1agents~1{agent_id}/get/parameters/0"), 8);
        assert_eq!(idx.line_of("/paths/~1api~1v1~1agents~1{agent_id}/get/parameters/1/in"), 10);
        assert_eq!(idx.line_of("/paths/~1api~1v1~1agents~1{agent_id}/get/responses/200"), 12);
        assert_eq!(idx.line_of("/components/schemas/A/required/1"), 18);
        assert_eq!(idx.line_of("/components/schemas/A/properties/a"), 20);
        assert_eq!(idx.position_of("/paths/~1api~1v1~1agents~1{agent_id}/get/parameters/1/in"), (10, 11));
        assert_eq!(idx.position_of("/paths/~1api~1v1~1agents~1{agent_id}/get/parameters/0"), (8, 9));
    }

    #[test]
    fn a_block_scalar_is_not_read_as_keys_and_unknown_pointers_fall_back_to_an_ancestor() {
        let idx = LineIndex::new(YAML);
        assert_eq!(idx.line_of("/paths/~1api~1v1~1agents~1{agent_id}/get/description/text"), 5);
        assert_eq!(idx.line_of("/paths/~1api~1v1~1agents~1{agent_id}/get/responses/200/$ref"), 12);
        assert_eq!(idx.line_of("/components/schemas/A/properties/a/type"), 20);
        assert_eq!(idx.line_of("/nowhere/at/all"), 1);
    }

    #[test]
    fn pretty_printed_json_keys_get_their_lines() {
        let json = "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"data\": {\n      \"type\": \"object\"\n    },\n    \"id\": {}\n  }\n}\n";
        let idx = LineIndex::new(json);
        assert_eq!(idx.line_of("/properties/data/type"), 5);
        assert_eq!(idx.line_of("/properties/id"), 7);
    }
}
