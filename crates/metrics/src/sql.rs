//! SQL execution accuracy: the gold and the predicted query are run on small
//! SQLite databases built from the task's CREATE TABLE statements and filled
//! with seeded rows (values drawn from the literals of both queries, their
//! neighbours and a few shared values, so that filters and joins match
//! something), and their result sets compared. Equal on every database →
//! the same answer. sql-create-context ships schemas without rows, which is
//! why the rows are made here (a "test-suite" check, as in Zhong et al. 2020).

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use safetune_core::rng::SeededRng;

/// Databases each pair of queries is compared on.
const DATABASES: u64 = 4;
/// Rows per table in each database.
const ROWS: usize = 8;

/// The SQL in an answer: fenced code or prose around it removed, from the
/// first SELECT/WITH to the first semicolon or the end of the statement.
pub fn extract_sql(answer: &str) -> String {
    let text = answer.replace("```sql", "```").replace("```SQL", "```");
    let body = match text.split("```").nth(1) {
        Some(fenced) if text.contains("```") => fenced.to_string(),
        _ => text,
    };
    let upper = body.to_uppercase();
    let start = ["SELECT", "WITH"].iter().filter_map(|k| upper.find(k)).min().unwrap_or(0);
    let sql = &body[start..];
    let end = sql.find(';').unwrap_or(sql.len());
    sql[..end].trim().to_string()
}

struct Table {
    name: String,
    columns: Vec<(String, bool)>,
}

/// `CREATE TABLE t (a VARCHAR, b INTEGER); CREATE TABLE u (...)` → tables
/// with (column, is numeric).
fn parse_schema(schema: &str) -> Option<Vec<Table>> {
    let mut tables = Vec::new();
    for stmt in schema.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let open = stmt.find('(')?;
        let close = stmt.rfind(')')?;
        let head: Vec<&str> = stmt[..open].split_whitespace().collect();
        if head.len() != 3 || !head[0].eq_ignore_ascii_case("create") || !head[1].eq_ignore_ascii_case("table") {
            return None;
        }
        let columns = stmt[open + 1..close]
            .split(',')
            .filter_map(|c| {
                let mut parts = c.split_whitespace();
                let name = parts.next()?.to_string();
                let ty = parts.next().unwrap_or("").to_uppercase();
                Some((name, ty.contains("INT") || ty.contains("REAL") || ty.contains("NUM") || ty.contains("FLOAT")))
            })
            .collect();
        tables.push(Table { name: head[2].to_string(), columns });
    }
    (!tables.is_empty()).then_some(tables)
}

/// String and number literals of a query.
fn literals(sql: &str) -> (Vec<String>, Vec<f64>) {
    let (mut strings, mut numbers) = (Vec::new(), Vec::new());
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let end = chars[i + 1..].iter().position(|&d| d == c).map(|p| i + 1 + p).unwrap_or(chars.len());
            strings.push(chars[i + 1..end].iter().collect());
            i = end + 1;
        } else if c.is_ascii_digit() && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) {
            let end = chars[i..].iter().position(|d| !(d.is_ascii_digit() || *d == '.')).map(|p| i + p).unwrap_or(chars.len());
            if let Ok(v) = chars[i..end].iter().collect::<String>().parse::<f64>() {
                numbers.push(v);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    (strings, numbers)
}

fn build_database(tables: &[Table], strings: &[String], numbers: &[f64], seed: u64) -> rusqlite::Result<Connection> {
    let db = Connection::open_in_memory()?;
    let mut rng = SeededRng::derive(seed, "sql-rows");
    let mut num_pool: Vec<f64> = numbers.iter().flat_map(|&n| [n - 1.0, n, n + 1.0]).chain((0..4).map(f64::from)).collect();
    num_pool.dedup();
    let mut text_pool: Vec<String> = strings.to_vec();
    text_pool.extend(num_pool.iter().map(|n| format_number(*n)));
    text_pool.extend(["a", "b", "c"].iter().map(|s| s.to_string()));
    for t in tables {
        let cols: Vec<String> = t.columns.iter().map(|(c, num)| format!("{c} {}", if *num { "INTEGER" } else { "VARCHAR" })).collect();
        db.execute(&format!("CREATE TABLE {} ({})", t.name, cols.join(", ")), [])?;
        let marks = vec!["?"; t.columns.len()].join(", ");
        let mut insert = db.prepare(&format!("INSERT INTO {} VALUES ({marks})", t.name))?;
        for _ in 0..ROWS {
            let row: Vec<rusqlite::types::Value> = t
                .columns
                .iter()
                .map(|(_, num)| {
                    if *num {
                        rusqlite::types::Value::Real(num_pool[rng.below(num_pool.len())])
                    } else {
                        rusqlite::types::Value::Text(text_pool[rng.below(text_pool.len())].clone())
                    }
                })
                .collect();
            insert.execute(rusqlite::params_from_iter(row))?;
        }
    }
    Ok(db)
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn run(db: &Connection, sql: &str) -> Option<Vec<Vec<String>>> {
    let mut stmt = db.prepare(sql).ok()?;
    if !stmt.readonly() {
        return None;
    }
    let n = stmt.column_count();
    let mut rows = stmt.query([]).ok()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().ok()? {
        let row = (0..n)
            .map(|i| match r.get_ref(i) {
                Ok(ValueRef::Null) => "NULL".to_string(),
                Ok(ValueRef::Integer(v)) => format_number(v as f64),
                Ok(ValueRef::Real(v)) => format_number((v * 1e6).round() / 1e6),
                Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).to_string(),
                Ok(ValueRef::Blob(b)) => format!("{b:?}"),
                Err(_) => "?".to_string(),
            })
            .collect();
        out.push(row);
        if out.len() > 10_000 {
            break;
        }
    }
    Some(out)
}

/// Whether `predicted` returns what `gold` returns on every test database of
/// `schema` (order matters only when the gold query has ORDER BY). `None`
/// when the schema cannot be read or the gold query does not run: then
/// execution says nothing about the answer.
pub fn same_execution(schema: &str, gold: &str, predicted: &str) -> Option<bool> {
    let tables = parse_schema(schema)?;
    let (mut strings, mut numbers) = literals(gold);
    let (s2, n2) = literals(predicted);
    strings.extend(s2);
    numbers.extend(n2);
    let ordered = gold.to_uppercase().contains("ORDER BY");
    for k in 0..DATABASES {
        let db = build_database(&tables, &strings, &numbers, k).ok()?;
        let mut want = run(&db, gold)?;
        let Some(mut got) = run(&db, predicted) else { return Some(false) };
        if !ordered {
            want.sort();
            got.sort();
        }
        if want != got {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_queries_match_and_wrong_ones_do_not() {
        let schema = "CREATE TABLE head (name VARCHAR, age INTEGER); CREATE TABLE management (head_id VARCHAR, name VARCHAR)";
        let gold = "SELECT COUNT(*) FROM head WHERE age > 56";
        // Written differently, same meaning.
        assert_eq!(same_execution(schema, gold, "select count(name) from head where 56 < age"), Some(true));
        assert_eq!(same_execution(schema, gold, "SELECT COUNT(*) FROM head AS T1 WHERE NOT T1.age <= 56"), Some(true));
        // Off by one at the boundary: 56 itself is among the rows.
        assert_eq!(same_execution(schema, gold, "SELECT COUNT(*) FROM head WHERE age >= 56"), Some(false));
        // Wrong column, wrong table, not SQL at all, a write.
        assert_eq!(same_execution(schema, "SELECT name FROM head WHERE age = 30", "SELECT name FROM head WHERE age = 31"), Some(false));
        assert_eq!(same_execution(schema, gold, "SELECT COUNT(*) FROM management"), Some(false));
        assert_eq!(same_execution(schema, gold, "The answer is 3."), Some(false));
        assert_eq!(same_execution(schema, gold, "DELETE FROM head"), Some(false));
        // Row order counts only under ORDER BY.
        let by_age = "SELECT name FROM head ORDER BY age, name";
        assert_eq!(same_execution(schema, "SELECT name FROM head", "SELECT name FROM head ORDER BY name DESC"), Some(true));
        assert_eq!(same_execution(schema, by_age, "SELECT name FROM head ORDER BY age DESC, name DESC"), Some(false));
        // A join on string literals.
        let j = "SELECT T1.name FROM head AS T1 JOIN management AS T2 ON T1.name = T2.name WHERE T2.head_id = 'x7'";
        assert_eq!(
            same_execution(schema, j, "SELECT head.name FROM management JOIN head ON management.name = head.name WHERE head_id = 'x7'"),
            Some(true)
        );
        assert_eq!(
            same_execution(schema, j, "SELECT T1.name FROM head AS T1 JOIN management AS T2 ON T1.name = T2.name WHERE T2.head_id = 'x8'"),
            Some(false)
        );
        // A gold query that does not run, or a schema that cannot be read: no verdict.
        assert_eq!(same_execution(schema, "SELECT nope FROM missing", gold), None);
        assert_eq!(same_execution("not a schema", gold, gold), None);
    }

    #[test]
    fn sql_is_extracted_from_answers() {
        assert_eq!(extract_sql("```sql\nSELECT a FROM t;\n```"), "SELECT a FROM t");
        assert_eq!(extract_sql("Here is the query: SELECT a FROM t WHERE b = 1"), "SELECT a FROM t WHERE b = 1");
        assert_eq!(extract_sql("SELECT a FROM t; -- done"), "SELECT a FROM t");
    }
}
