//! A numeric CSV reader that says exactly where a file is wrong.

use std::path::{Path, PathBuf};

/// What can go wrong reading data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A row has a different number of fields than the first row.
    #[error("{path}:{line}: expected {expected} fields, found {found} (ragged row)")]
    Ragged {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Fields in the first data row.
        expected: usize,
        /// Fields in this row.
        found: usize,
    },
    /// A field is not a number.
    #[error("{path}:{line}: field {column} is not a number: {text:?}")]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based field number.
        column: usize,
        /// The offending text.
        text: String,
    },
    /// No data rows.
    #[error("{path}: no data rows")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A table of numbers: `rows × cols`, row-major, with optional column names.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Column names from the header line (empty when there was none).
    pub header: Vec<String>,
    /// The values, row-major.
    pub data: Vec<f64>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl Table {
    /// Reads a comma-separated file of numbers; `has_header` skips (and keeps) the first line.
    /// Blank lines are ignored; every other line must have as many fields as the first.
    pub fn read_csv(path: impl AsRef<Path>, has_header: bool) -> Result<Table, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::parse_csv(&text, has_header, path)
    }

    /// Parses CSV text; `path` is used in error messages.
    pub fn parse_csv(text: &str, has_header: bool, path: &Path) -> Result<Table, Error> {
        let mut header = Vec::new();
        let mut data = Vec::new();
        let mut cols = None;
        let mut rows = 0;
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if has_header && header.is_empty() && rows == 0 && cols.is_none() {
                header = line.split(',').map(|s| s.trim().to_string()).collect();
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let expected = *cols.get_or_insert(fields.len());
            if fields.len() != expected {
                return Err(Error::Ragged { path: path.to_path_buf(), line: line_no, expected, found: fields.len() });
            }
            for (j, f) in fields.iter().enumerate() {
                let v: f64 = f.trim().parse().map_err(|_| Error::NotANumber {
                    path: path.to_path_buf(),
                    line: line_no,
                    column: j + 1,
                    text: f.to_string(),
                })?;
                data.push(v);
            }
            rows += 1;
        }
        let Some(cols) = cols else { return Err(Error::Empty { path: path.to_path_buf() }) };
        Ok(Table { header, data, rows, cols })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Splits off the last column as integer labels: `(features rows × (cols−1), labels)`.
    pub fn features_and_labels(&self) -> (Vec<f64>, Vec<u32>) {
        let mut x = Vec::with_capacity(self.rows * (self.cols - 1));
        let mut y = Vec::with_capacity(self.rows);
        for i in 0..self.rows {
            let r = self.row(i);
            x.extend_from_slice(&r[..self.cols - 1]);
            y.push(r[self.cols - 1] as u32);
        }
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_line() {
        let p = Path::new("bad.csv");
        let e = Table::parse_csv("a,b\n1,2\n3\n", true, p).unwrap_err();
        assert_eq!(e.to_string(), "bad.csv:3: expected 2 fields, found 1 (ragged row)");
        let e = Table::parse_csv("1,2\n\n3,x7\n", false, p).unwrap_err();
        assert_eq!(e.to_string(), "bad.csv:3: field 2 is not a number: \"x7\"");
        assert!(matches!(Table::parse_csv("h\n", true, p), Err(Error::Empty { .. })));
        let t = Table::parse_csv("x,y,label\n1,2,0\n3,4,1\n", true, p).unwrap();
        assert_eq!((t.rows, t.cols, t.header.len()), (2, 3, 3));
        assert_eq!(t.features_and_labels(), (vec![1.0, 2.0, 3.0, 4.0], vec![0, 1]));
        let missing = Table::read_csv("/nonexistent/file.csv", false).unwrap_err();
        assert!(missing.to_string().starts_with("/nonexistent/file.csv: "));
    }
}
