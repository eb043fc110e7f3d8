//! Launch bounds of kernels, from markers in the PTX: `.maxntid` and `.minnctapersm`.
//!
//! ptxas gives a kernel as many registers as its code wants (up to 255), which can leave one block
//! an SM where two would hide each other's latencies. CUDA C sets bounds with
//! `__launch_bounds__`; Rust's nvptx target has no such attribute, so a kernel asks for them with
//! a PTX comment in its body (`gpu::device::two_blocks_per_sm` leaves
//! `// launch bounds: .maxntid 256, 1, 1 .minnctapersm 2`), and this rewrite moves the
//! directives after the comment's prefix to the entry's header, between its parameter list and
//! its body, where PTX wants them. The rewrite runs on the sm_80 module before the sm_90 variant
//! (pdl.rs) is derived from it, so both carry the bounds.
//!
//! This file is also compiled into `build.rs` (`#[path]`).

/// The comment's prefix; the rest of the line is the directives, separated by their leading dots.
pub const MARKER: &str = "// launch bounds: ";

/// `ptx` with each marked entry's directives in its header, or an error naming what was not where
/// it was expected.
pub fn with_launch_bounds(ptx: &str) -> Result<String, String> {
    let lines: Vec<&str> = ptx.lines().collect();
    // For each line that opens an entry's body, the directives of that entry (if marked).
    let mut out = String::with_capacity(ptx.len() + 1024);
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.starts_with(".visible .entry ") || trimmed.starts_with(".entry ") {
            // The header runs to the line "{"; the body to the matching "}" at the line's start.
            let open = (i..lines.len()).find(|&j| lines[j] == "{").ok_or("an entry without a body")?;
            let close =
                (open..lines.len()).find(|&j| lines[j] == "}").ok_or("an entry body without its end")?;
            let mut directives: Vec<String> = Vec::new();
            for line in &lines[open..close] {
                if let Some(rest) = line.trim_start().strip_prefix(MARKER) {
                    for directive in rest.split(" .").map(|d| d.trim().trim_start_matches('.')) {
                        if directive.is_empty() {
                            continue;
                        }
                        let directive = format!(".{directive}");
                        if !directives.contains(&directive) {
                            directives.push(directive);
                        }
                    }
                }
            }
            for line in &lines[i..open] {
                out.push_str(line);
                out.push('\n');
            }
            for directive in &directives {
                out.push_str(directive);
                out.push('\n');
            }
            i = open;
            continue;
        }
        out.push_str(lines[i]);
        out.push('\n');
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = ".version 7.0\n.target sm_80\n\n\
        .visible .entry plain(\n\t.param .u64 p\n)\n{\n\t.reg .b32 \t%r<2>;\n\tret;\n\n}\n\
        .visible .entry bounded(\n\t.param .u64 p\n)\n{\n\t.reg .b32 \t%r<2>;\n\t// begin inline asm\n\
        \t// launch bounds: .maxntid 256, 1, 1 .minnctapersm 2\n\t// end inline asm\n\
        \t// begin inline asm\n\t// launch bounds: .maxntid 256, 1, 1 .minnctapersm 2\n\t// end inline asm\n\
        \tret;\n\n}\n";

    #[test]
    fn a_marked_entry_gets_its_directives_once_in_its_header() {
        let out = with_launch_bounds(MODULE).unwrap();
        let bounded = &out[out.find(".visible .entry bounded").unwrap()..];
        let header = &bounded[..bounded.find("\n{\n").unwrap()];
        assert!(header.ends_with(")\n.maxntid 256, 1, 1\n.minnctapersm 2"), "{header}");
        // One directive line each (the markers stay, as comments).
        assert_eq!(out.lines().filter(|l| l.starts_with(".maxntid 256, 1, 1")).count(), 1);
        assert_eq!(out.lines().filter(|l| l.starts_with(".minnctapersm 2")).count(), 1);
        // The unmarked entry is untouched.
        let plain = &out[..out.find(".visible .entry bounded").unwrap()];
        assert!(!plain.contains(".maxntid"));
        assert_eq!(out.lines().count(), MODULE.lines().count() + 2);
    }

    #[test]
    fn a_module_without_markers_is_unchanged() {
        let module = MODULE.replace("launch bounds", "something else");
        assert_eq!(with_launch_bounds(&module).unwrap(), module);
    }
}
