//! Markdown: report sections, their assembly into a report, and tables.

/// A section of `report.md`: a title and a markdown body (which may link figures by relative
/// path).
#[derive(Clone, Debug, Default)]
pub struct ReportSection {
    /// The section heading (rendered as `## title`).
    pub title: String,
    /// Markdown body.
    pub body: String,
}

/// A whole report: a title, an introduction and its sections.
pub fn assemble_report(title: &str, intro: &str, sections: &[ReportSection]) -> String {
    let device = crate::device::name();
    let mut out = format!("# {title}\n\n{intro}\n\nComputed on {device}.\n\n");
    for s in sections {
        out.push_str(&format!("## {}\n\n{}\n\n", s.title, s.body.trim_end()));
    }
    out
}

/// A markdown table (cells are inserted as they are; `|` is escaped).
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = format!(
        "| {} |\n|{}\n",
        headers
            .iter()
            .map(|h| esc(h))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(headers.len())
    );
    for r in rows {
        out.push_str(&format!(
            "| {} |\n",
            r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
        ));
    }
    out
}
