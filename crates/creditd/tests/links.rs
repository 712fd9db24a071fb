//! Every relative link in every Markdown file of the repository resolves: to a
//! file or directory inside the repository, and, for `#fragment`s into a
//! Markdown file, to one of its headings. The repository stands alone: a user
//! has only it, so a link out of it (`../shared/...`) is a failure too.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

/// Every `*.md` under `dir`, skipping build output and hidden directories.
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("readable directory").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            markdown_files(&path, out);
        } else if kind.is_file() && name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The text of a Markdown file with fenced code blocks and inline code spans
/// blanked out (links in code are examples, not links).
fn prose(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut fence: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(open) = &fence {
            if trimmed.starts_with(open.as_str()) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(trimmed[..3].to_string());
            continue;
        }
        let mut kept = String::with_capacity(line.len());
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                kept.push(' ');
            } else {
                kept.push(if in_code { ' ' } else { c });
            }
        }
        lines.push((n + 1, kept));
    }
    lines
}

/// The targets of inline links `[text](target)` / `![alt](target "title")`
/// and of reference definitions `[label]: target`, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (n, line) in prose(text) {
        let bytes = line.as_bytes();
        let mut i = 0;
        while let Some(at) = line[i..].find("](") {
            let start = i + at + 2;
            let mut depth = 0usize;
            let mut end = start;
            while end < bytes.len() {
                match bytes[end] {
                    b'(' => depth += 1,
                    b')' if depth == 0 => break,
                    b')' => depth -= 1,
                    _ => {}
                }
                end += 1;
            }
            let inner = line[start..end].trim();
            let target = inner.split_whitespace().next().unwrap_or("").trim_matches(|c| c == '<' || c == '>');
            targets.push((n, target.to_string()));
            i = end.min(bytes.len());
            if i >= bytes.len() {
                break;
            }
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some(close) = trimmed.find("]:")
            && !trimmed[..close].contains('(')
        {
            let target = trimmed[close + 2..].split_whitespace().next().unwrap_or("");
            targets.push((n, target.trim_matches(|c| c == '<' || c == '>').to_string()));
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and
/// `_` dropped, spaces to `-`; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        if fence || !trimmed.starts_with('#') {
            continue;
        }
        let title = trimmed.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let mut slug = String::new();
        for c in title.trim().chars() {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                slug.extend(c.to_lowercase());
            } else if c == ' ' {
                slug.push('-');
            }
        }
        let mut candidate = slug.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// Resolves `target` (relative to `dir`) lexically, without following links.
fn resolve(dir: &Path, target: &str) -> PathBuf {
    let mut path = PathBuf::new();
    for component in dir.join(target).components() {
        match component {
            Component::ParentDir => {
                path.pop();
            }
            Component::CurDir => {}
            other => path.push(other),
        }
    }
    path
}

/// What is wrong with each relative link of the repository's Markdown.
fn broken_links(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    markdown_files(root, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable Markdown");
        let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
        for (line, target) in link_targets(&text) {
            if target.is_empty() {
                broken.push(format!("{shown}:{line}: an empty link"));
                continue;
            }
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path_part, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let (resolved, linked_text) = if path_part.is_empty() {
                (file.clone(), Some(text.clone()))
            } else {
                let resolved = if path_part.starts_with('/') {
                    resolve(root, path_part.trim_start_matches('/'))
                } else {
                    resolve(file.parent().expect("a file has a directory"), path_part)
                };
                if !resolved.starts_with(root) {
                    broken.push(format!("{shown}:{line}: {target} points outside the repository"));
                    continue;
                }
                if !resolved.exists() {
                    broken.push(format!("{shown}:{line}: {target}: no such file"));
                    continue;
                }
                let linked = (resolved.extension().is_some_and(|e| e == "md"))
                    .then(|| std::fs::read_to_string(&resolved).expect("readable Markdown"));
                (resolved, linked)
            };
            if let (Some(fragment), Some(linked)) = (fragment, linked_text)
                && !anchors(&linked).contains(&fragment.to_lowercase())
            {
                let name = resolved.strip_prefix(root).unwrap_or(&resolved).display().to_string();
                broken.push(format!("{shown}:{line}: {target}: {name} has no heading #{fragment}"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_repository_resolves() {
    let root = repo_root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.iter().any(|f| f.ends_with("README.md")), "found no Markdown under {}", root.display());
    assert!(root.join("docs/README.md").is_file(), "docs/README.md is the documentation's index");
    let broken = broken_links(&root);
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_catches_missing_files_outside_links_and_unknown_headings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().canonicalize().expect("canonical");
    std::fs::create_dir(root.join("docs")).expect("mkdir");
    std::fs::write(root.join("docs/a.md"), "# Title\n\n## Holds: authorize, settle\n").expect("write");
    std::fs::write(
        root.join("README.md"),
        "[ok](docs/a.md) [ok](docs/a.md#holds-authorize-settle) [ok](#top) [web](https://example.com)\n\
         `[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n\
         [gone](docs/b.md) [out](../shared/spec/api.md) [anchor](docs/a.md#nope)\n\n# Top\n",
    )
    .expect("write");
    let broken = broken_links(&root);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].contains("docs/b.md: no such file"), "{broken:#?}");
    assert!(broken[1].contains("points outside the repository"), "{broken:#?}");
    assert!(broken[2].contains("has no heading #nope"), "{broken:#?}");
}
