//! Reading rows of any supported file format into JSON-like records:
//! JSON (an array of objects), JSONL, CSV, TSV and Parquet. Errors name the
//! file and line (or row).

use std::path::Path;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;
use serde_json::{Map, Value};

use crate::csv::parse_csv;

/// One row: field name → value, and the line (or row number) it came from.
#[derive(Debug, Clone)]
pub struct Record {
    pub line: usize,
    pub fields: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Jsonl,
    Csv,
    Tsv,
    Parquet,
    #[serde(rename = "json-columns")]
    /// One JSON object of parallel lists (`{"instructions": [...], "tags": [...]}`):
    /// row i has, for each key with a non-empty list, that list's i-th value.
    JsonColumns,
}

impl Format {
    /// From the file extension (`.json`, `.jsonl`, `.csv`, `.tsv`, `.parquet`; a text format
    /// may be gzip-compressed, `.jsonl.gz`).
    pub fn from_path(path: &Path) -> Result<Self> {
        let inner = if is_gzip(path) { Path::new(path.file_stem().unwrap_or_default()) } else { path };
        let ext = inner.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        Ok(match ext.as_str() {
            "json" => Format::Json,
            "jsonl" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "parquet" => Format::Parquet,
            _ => bail!("{}: unknown file format (use .json, .jsonl, .csv, .tsv or .parquet, or set `format`)", path.display()),
        })
    }
}

/// Whether a file is gzip-compressed by its name (`.gz`): read through a decoder.
fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// The most a gzip-compressed data file may hold once decompressed (BeaverTails' 30k
/// train file, the largest, is about 20 MB): beyond it the file is refused, not allocated.
const MAX_DECOMPRESSED: u64 = 1 << 30;

fn bytes_of(path: &Path) -> Result<Vec<u8>> {
    if !is_gzip(path) {
        return std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()));
    }
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("{}: not a readable gzip file: {e}", path.display()))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        bail!("{}: more than {} MB once decompressed", path.display(), MAX_DECOMPRESSED >> 20);
    }
    Ok(out)
}

fn text_of(path: &Path) -> Result<String> {
    let bytes = bytes_of(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow!("{}:{line}: not valid UTF-8", path.display())
    })?;
    if text.trim().is_empty() {
        bail!("{}: empty file", path.display());
    }
    Ok(text)
}

/// Reads every record of a file. `columns` names the columns of a CSV/TSV
/// without a header row.
pub fn read_records(path: &Path, format: Format, columns: Option<&[&str]>) -> Result<Vec<Record>> {
    let file = path.display().to_string();
    match format {
        Format::Json => {
            let text = text_of(path)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{file}:{}: {e}", e.line()))?;
            let Value::Array(rows) = v else { bail!("{file}:1: expected a JSON array of objects") };
            // Line numbers of a JSON array are not kept; rows are numbered from 1.
            rows.into_iter()
                .enumerate()
                .map(|(i, r)| match r {
                    Value::Object(fields) => Ok(Record { line: i + 1, fields }),
                    _ => bail!("{file}: row {}: expected an object", i + 1),
                })
                .collect()
        }
        Format::Jsonl => {
            let text = text_of(path)?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| match serde_json::from_str::<Value>(l) {
                    Ok(Value::Object(fields)) => Ok(Record { line: i + 1, fields }),
                    Ok(_) => bail!("{file}:{}: expected a JSON object", i + 1),
                    Err(e) => bail!("{file}:{}: {e}", i + 1),
                })
                .collect()
        }
        Format::Csv | Format::Tsv => {
            let text = text_of(path)?;
            let sep = if format == Format::Csv { ',' } else { '\t' };
            let rows = parse_csv(&text, sep, &file)?;
            let (header, body): (Vec<String>, &[(usize, Vec<String>)]) = match columns {
                Some(c) => (c.iter().map(|s| s.to_string()).collect(), &rows[..]),
                None => {
                    let Some((line, h)) = rows.first() else { bail!("{file}: empty file") };
                    let header: Vec<String> = h.iter().map(|s| s.trim().to_string()).collect();
                    safetune_core::config::no_repeats("header", &header).map_err(|e| anyhow!("{file}:{line}: {e}"))?;
                    (header, &rows[1..])
                }
            };
            body.iter()
                .map(|(line, r)| {
                    if r.len() != header.len() {
                        bail!("{file}:{line}: expected {} fields ({}), found {}", header.len(), header.join(","), r.len());
                    }
                    let fields = header.iter().cloned().zip(r.iter().map(|v| Value::String(v.clone()))).collect();
                    Ok(Record { line: *line, fields })
                })
                .collect()
        }
        Format::Parquet => read_parquet(path),
        Format::JsonColumns => {
            let text = text_of(path)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{file}:{}: {e}", e.line()))?;
            let Value::Object(cols) = v else { bail!("{file}:1: expected a JSON object of lists") };
            let mut rows: Option<usize> = None;
            let mut lists = Vec::new();
            for (k, v) in cols {
                let Value::Array(items) = v else { bail!("{file}: field `{k}`: expected a list") };
                if items.is_empty() {
                    continue; // an empty column (`"inputs": []`) is a field no row has
                }
                match rows {
                    Some(n) if n != items.len() => bail!("{file}: field `{k}`: {} values, other fields have {n}", items.len()),
                    _ => rows = Some(items.len()),
                }
                lists.push((k, items));
            }
            let Some(n) = rows else { bail!("{file}: no rows") };
            Ok((0..n)
                .map(|i| Record { line: i + 1, fields: lists.iter().map(|(k, items)| (k.clone(), items[i].clone())).collect() })
                .collect())
        }
    }
}

fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| anyhow!("{file}: {e}"))?;
    let reader = SerializedFileReader::new(f).map_err(|e| anyhow!("{file}: not a readable Parquet file: {e}"))?;
    let rows = reader.get_row_iter(None).map_err(|e| anyhow!("{file}: {e}"))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| anyhow!("{file}: row {}: {e}", i + 1))?;
        let mut fields = Map::new();
        for (name, field) in row.get_column_iter() {
            let v = parquet_value(field);
            fields.insert(name.clone(), v);
        }
        out.push(Record { line: i + 1, fields });
    }
    if out.is_empty() {
        bail!("{file}: no rows");
    }
    Ok(out)
}

/// A Parquet value as JSON: scalars as themselves, lists (MMLU's `choices`) as arrays of
/// their items, anything else as its text.
fn parquet_value(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float(x) => Value::from(*x),
        Field::Double(x) => Value::from(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(parquet_value).collect()),
        other => Value::String(other.to_string()),
    }
}

impl Record {
    /// A text field; errors name file, line and field.
    pub fn text(&self, field: &str, file: &str) -> Result<String> {
        match self.fields.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Null) | None => bail!("{file}:{}: missing field `{field}`", self.line),
            Some(other) => bail!("{file}:{}: field `{field}`: expected text, found {}", self.line, kind(other)),
        }
    }

    /// A text, number or boolean field written out as text (labels, user templates).
    pub fn scalar(&self, field: &str, file: &str) -> Result<String> {
        match self.fields.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(Value::Bool(b)) => Ok(b.to_string()),
            Some(Value::Null) | None => bail!("{file}:{}: missing field `{field}`", self.line),
            Some(other) => bail!("{file}:{}: field `{field}`: expected text, found {}", self.line, kind(other)),
        }
    }

    /// An optional text field (missing or null → empty).
    pub fn text_or_empty(&self, field: &str, file: &str) -> Result<String> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(_) => self.text(field, file),
        }
    }

    /// A list-of-strings field.
    pub fn texts(&self, field: &str, file: &str) -> Result<Vec<String>> {
        match self.fields.get(field) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| anyhow!("{file}:{}: field `{field}`: expected strings", self.line)))
                .collect(),
            None => bail!("{file}:{}: missing field `{field}`", self.line),
            Some(other) => bail!("{file}:{}: field `{field}`: expected a list, found {}", self.line, kind(other)),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_compressed_file_reads_as_its_text_and_a_damaged_one_is_named() {
        let dir = std::env::temp_dir().join(format!("safetune-gz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n";
        let plain = dir.join("rows.jsonl");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.join("rows.jsonl.gz");
        std::fs::write(&gz, safetune_test_support::gzip(text.as_bytes())).unwrap();
        assert_eq!(Format::from_path(&gz).unwrap(), Format::Jsonl);
        let fields =
            |p: &Path| read_records(p, Format::from_path(p).unwrap(), None).unwrap().into_iter().map(|r| r.fields).collect::<Vec<_>>();
        assert_eq!(fields(&gz), fields(&plain));
        // Not gzip inside: one line naming the file.
        let bad = dir.join("bad.jsonl.gz");
        std::fs::write(&bad, text).unwrap();
        let err = read_records(&bad, Format::Jsonl, None).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl.gz: not a readable gzip file") && !err.contains('\n'), "{err}");
        assert!(Format::from_path(Path::new("rows.gz")).is_err(), "no format under the compression");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
