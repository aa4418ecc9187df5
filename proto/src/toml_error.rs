//! Configuration files' parse errors as one line ("line 3, column 7:
//! unknown field `listn`, expected one of ..."), instead of the parser's
//! multi-line report with a caret: every part of the product reports bad
//! input in one line.

/// `e`, from parsing `text`, as one line that says where.
pub fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Parses `text` as TOML into `T`, with a one-line error.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| one_line(text, &e))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        listen: Option<String>,
    }

    #[test]
    fn errors_are_one_line_and_say_where() {
        let e = super::parse::<Sample>("\n\nlistn = \"x\"\n").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("line 3, column 1:"), "{e}");
        assert!(e.contains("listn"), "{e}");
    }
}
