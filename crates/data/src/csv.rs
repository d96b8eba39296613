//! A small RFC 4180 reader (quoted fields, doubled quotes, newlines in quotes).

use safetune_core::anyhow::bail;
use safetune_core::Result;

/// Parses CSV (or TSV with `sep = '\t'`, where quotes are literal) into rows,
/// each with its 1-based starting line.
pub fn parse_csv(text: &str, sep: char, file: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let quoting = sep != '\t';
    let mut rows = Vec::new();
    let mut field = String::new();
    let mut row = Vec::new();
    let mut in_quotes = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if quoting && at_field_start => {
                in_quotes = true;
                at_field_start = false;
            }
            c if c == sep => {
                row.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push((row_line, std::mem::take(&mut row)));
                }
                row.clear();
                line += 1;
                row_line = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        bail!("{file}:{row_line}: unterminated quoted field");
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_commas_and_newlines() {
        let rows = parse_csv("a,b\n\"x, y\",\"he said \"\"hi\"\"\"\n\"multi\nline\",z\n", ',', "t.csv").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].1, vec!["x, y", "he said \"hi\""]);
        assert_eq!(rows[2], (3, vec!["multi\nline".to_string(), "z".to_string()]));
        let tsv = parse_csv("s\tl\n\"quoted\" text\t1\n", '\t', "t.tsv").unwrap();
        assert_eq!(tsv[1].1, vec!["\"quoted\" text", "1"]);
        assert!(parse_csv("\"open", ',', "bad.csv").unwrap_err().to_string().contains("bad.csv:1"));
    }
}
