//! CSV and TSV files through the `csv` crate, with the line each row starts on
//! and an error for a quoted field the file never closes.

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

/// Parses CSV (or TSV with `sep = '\t'`, where quotes are literal) into rows,
/// each with its 1-based starting line; blank lines are skipped.
pub fn parse_csv(text: &str, sep: char, file: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let Ok(delimiter) = u8::try_from(sep) else { bail!("{file}: separator {sep:?} is not a single byte") };
    let quoting = sep != '\t';
    let read = |text: &str| -> Result<Vec<(usize, usize, Vec<String>)>> {
        let mut reader =
            csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(delimiter).quoting(quoting).from_reader(text.as_bytes());
        let mut rows = Vec::new();
        // The reader's positions are where it started reading a record, before
        // the blank lines it skips; lines are counted from the record's first byte.
        let (mut counted, mut line) = (0, 1);
        for record in reader.records() {
            let record = record.map_err(|e| anyhow!("{file}:{}: {e}", e.position().map_or(line, |p| p.line() as usize)))?;
            let from = record.position().map_or(counted, |p| p.byte() as usize).max(counted);
            let start = from + text[from..].len() - text[from..].trim_start_matches(['\r', '\n']).len();
            line += text[counted..start].matches('\n').count();
            counted = start;
            rows.push((line, start, record.iter().map(str::to_string).collect()));
        }
        Ok(rows)
    };
    let rows = read(text)?;
    // The `csv` crate ends a quoted field left open at the end of the input
    // without an error (BurntSushi/rust-csv#252). Closing the last record with a
    // quote changes nothing exactly when its last field was still open.
    if let Some((line, byte, fields)) = rows.last().filter(|_| quoting) {
        let tail = &text[*byte..];
        let closed = read(&format!("{tail}\""))?;
        if closed.len() == 1 && closed[0].2 == *fields {
            bail!("{file}:{line}: unterminated quoted field");
        }
    }
    Ok(rows.into_iter().map(|(line, _, fields)| (line, fields)).collect())
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
        // Blank lines and CRLF endings; a row after a blank line keeps its own line number.
        let rows = parse_csv("a,b\r\n\r\nc,d\r\n", ',', "t.csv").unwrap();
        assert_eq!(rows, vec![(1, vec!["a".into(), "b".into()]), (3, vec!["c".into(), "d".into()])]);
    }

    #[test]
    fn an_open_quote_is_an_error_with_its_line_and_a_closed_one_is_not() {
        for (text, line) in [("\"open", 1), ("a,b\nc,\"d\ne,f\n", 2), ("a\n\"x\"\"\n", 2), ("a,\"b\"\"", 1)] {
            let err = parse_csv(text, ',', "bad.csv").unwrap_err().to_string();
            assert_eq!(err, format!("bad.csv:{line}: unterminated quoted field"), "{text:?}");
        }
        for text in ["a,\"b\"", "a,\"b\"\n", "a,\"b\"\"\"", "a,b", "\"\"", "x\n\"\"\n", "a,5\" screen\n"] {
            assert!(parse_csv(text, ',', "ok.csv").is_ok(), "{text:?}");
        }
        // In TSV quotes are literal, so an odd one is no error.
        assert_eq!(parse_csv("\"open\n", '\t', "t.tsv").unwrap(), vec![(1, vec!["\"open".to_string()])]);
    }
}
