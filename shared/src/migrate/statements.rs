//! Reading a migration's SQL as PostgreSQL would: where its statements end (quotes, comments,
//! dollar quoting), and the names of the indexes it builds concurrently.

/// The names of the indexes a migration builds with `CREATE [UNIQUE] INDEX CONCURRENTLY
/// [IF NOT EXISTS] name`, as PostgreSQL stores them (unquoted names folded to lower case).
pub(crate) fn concurrent_index_names(sql: &str) -> Vec<String> {
    let mut names = Vec::new();
    for statement in split_statements(sql) {
        let mut words = Words(without_leading_comments(&statement));
        let mut next = || words.next();
        let matches = |w: Option<String>, kw: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(kw));
        if !matches(next(), "create") {
            continue;
        }
        let mut word = next();
        if matches(word.clone(), "unique") {
            word = next();
        }
        if !matches(word, "index") || !matches(next(), "concurrently") {
            continue;
        }
        let mut word = next();
        if matches(word.clone(), "if") {
            // IF NOT EXISTS
            next();
            next();
            word = next();
        }
        if let Some(name) = word.filter(|w| !w.eq_ignore_ascii_case("on")) {
            names.push(name);
        }
    }
    names
}

/// A statement without the comments before it.
fn without_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if s.starts_with("--") {
            s = &s[line_comment_end(s, 0)..];
        } else if s.starts_with("/*") {
            s = &s[block_comment_end(s.as_bytes(), 0)..];
        } else {
            return s;
        }
    }
}

/// Words of a statement: identifiers (quoted ones unquoted, others folded to lower case).
struct Words<'a>(&'a str);

impl Iterator for Words<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let s = self.0.trim_start();
        if let Some(rest) = s.strip_prefix('"') {
            let mut name = String::new();
            let mut chars = rest.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().is_some_and(|(_, c)| *c == '"') {
                        chars.next();
                        name.push('"');
                        continue;
                    }
                    self.0 = &rest[i + 1..];
                    return Some(name);
                }
                name.push(c);
            }
            self.0 = "";
            return Some(name);
        }
        let end = s
            .find(|c: char| c.is_whitespace() || c == '(' || c == '"')
            .unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        self.0 = &s[end..];
        Some(s[..end].to_ascii_lowercase())
    }
}

/// Splits a migration into its statements, each run on its own. Knows PostgreSQL's quoting:
/// `'…'`, `"…"`, `$tag$…$tag$` and both kinds of comments (kept with the statement they
/// precede); drops what holds only comments.
pub(crate) fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut code = false; // the current piece holds something besides comments
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = line_comment_end(sql, i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(bytes, i);
                continue;
            }
            quote @ (b'\'' | b'"') => {
                code = true;
                // E'…': backslash escapes (`E'it\'s'`).
                let escapes = quote == b'\''
                    && i >= 1
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && (i < 2 || !is_ident_byte(bytes[i - 2]));
                i += 1;
                while i < bytes.len() {
                    if escapes && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            // `$` inside an identifier (`a$b`) or a parameter (`$1`) opens no quote.
            b'$' if i == 0 || !is_ident_byte(bytes[i - 1]) => {
                code = true;
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|n| i + 1 + n);
                let opens = |e: usize| {
                    bytes[e] == b'$' && !sql[i + 1..e].starts_with(|c: char| c.is_ascii_digit())
                };
                if let Some(end) = tag_end.filter(|&e| opens(e)) {
                    let tag = &sql[i..=end];
                    let body = end + 1;
                    i = sql[body..]
                        .find(tag)
                        .map_or(bytes.len(), |n| body + n + tag.len());
                    continue;
                }
                i += 1;
                continue;
            }
            b';' => {
                if code {
                    statements.push(sql[start..i].trim().to_owned());
                }
                code = false;
                start = i + 1;
            }
            c if !c.is_ascii_whitespace() => code = true,
            _ => {}
        }
        i += 1;
    }
    if code {
        statements.push(sql[start..].trim().to_owned());
    }
    statements
}

/// Where the `--` comment starting at `start` ends: after its line's newline, or at the end.
fn line_comment_end(sql: &str, start: usize) -> usize {
    sql[start..].find('\n').map_or(sql.len(), |n| start + n + 1)
}

/// Where the `/* */` comment starting at `start` ends (comments nest in PostgreSQL): after
/// its outermost `*/`, or at the end.
fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if bytes[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// A byte that may continue an identifier (ASCII letters, digits, `_`, `$`; any byte of a
/// non-ASCII character).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_split_where_postgresql_would() {
        let sql = "-- a comment; not a statement\n\
                   ALTER TABLE t ADD COLUMN IF NOT EXISTS a text DEFAULT 'x;y';\n\
                   /* block; /* nested; */ still */\n\
                   CREATE INDEX CONCURRENTLY IF NOT EXISTS \"i;1\" ON t (a);\n\
                   DO $body$ BEGIN PERFORM 1; END $body$;\n\
                   SELECT $$a;b$$, 'it''s; fine'\n";
        assert_eq!(
            split_statements(sql),
            vec![
                // Comments stay with the statement they precede (PostgreSQL skips them).
                "-- a comment; not a statement\nALTER TABLE t ADD COLUMN IF NOT EXISTS a text DEFAULT 'x;y'",
                "/* block; /* nested; */ still */\nCREATE INDEX CONCURRENTLY IF NOT EXISTS \"i;1\" ON t (a)",
                "DO $body$ BEGIN PERFORM 1; END $body$",
                "SELECT $$a;b$$, 'it''s; fine'",
            ]
        );
        assert!(split_statements("-- only\n/* comments */;\n ; ").is_empty());
        // Backslash escapes in E'' strings; `$` in identifiers and parameters; tags of any
        // letters.
        assert_eq!(
            split_statements(
                "SELECT E'it\\'s; x', e'\\\\'; SELECT a$b$c FROM t$1; \
                 DO $é$ BEGIN PERFORM 1; END $é$; SELECT 'plain\\'; SELECT $1"
            ),
            vec![
                "SELECT E'it\\'s; x', e'\\\\'",
                "SELECT a$b$c FROM t$1",
                "DO $é$ BEGIN PERFORM 1; END $é$",
                "SELECT 'plain\\'",
                "SELECT $1",
            ]
        );
    }

    #[test]
    fn concurrent_index_names_are_read_as_postgresql_stores_them() {
        let sql = "ALTER TABLE t ADD COLUMN IF NOT EXISTS a uuid;\n\
                   -- the index, café; /* not closed here\n\
                   /* a /* nested é */ comment */ CREATE INDEX CONCURRENTLY IF NOT EXISTS Activity_Idx ON t (a);\n\
                   create unique index concurrently \"Quoted\"\"Name\" on t (b);\n\
                   CREATE INDEX CONCURRENTLY ON t (c);\n\
                   CREATE INDEX plain_idx ON t (d);";
        assert_eq!(
            concurrent_index_names(sql),
            vec!["activity_idx".to_string(), "Quoted\"Name".to_string()]
        );
    }
}
