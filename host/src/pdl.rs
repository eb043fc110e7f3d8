//! The Hopper variant of the kernel module: programmatic dependent launch (PDL).
//!
//! Between two kernels on one stream the GPU normally drains the first grid completely before it
//! starts launching the second: at batch-1 decode, with ~390 short kernels per token, that gap is
//! a large share of the step. With PDL (sm_90) a kernel launched with the
//! programmatic-stream-serialization attribute may start while its predecessor is still running,
//! once every block of the predecessor has executed `griddepcontrol.launch_dependents`; it must
//! then execute `griddepcontrol.wait` (wait until the predecessor grid has completed and its memory
//! is visible) before touching anything the predecessor reads or writes.
//!
//! Rather than edit every kernel, the sm_90 module is derived from the sm_80 one: at the top of
//! every entry point (after its register declarations) `griddepcontrol.wait` is inserted, then the
//! trigger. A kernel then behaves exactly as before, except that its blocks are launched and
//! scheduled during the previous kernel's run instead of after it. The trigger comes after the
//! wait so that only the next kernel is launched early, not a cascade of kernels whose waiting
//! blocks would take SM slots from the running one (with the trigger first, prefill ran 6% slower).
//! Every kernel waits before it can complete, so completion stays transitive: a grid completes
//! only after its predecessor did.
//!
//! A kernel that has useful work to do before it needs its predecessor's results (the GEMVs
//! prefetch their first weight rows into L2) marks the place with [`MARKER`], a PTX comment in
//! the sm_80 module (`gpu::device::dependent_launch_wait`); there the wait and the trigger are
//! inserted instead of at the top. Everything before the marker must not read what earlier kernels
//! write nor write what they read.
//!
//! This file is also compiled into `build.rs` (`#[path]`), which writes the variant beside the
//! sm_80 module.

/// The PTX ISA version that has `griddepcontrol` (PTX 7.8, sm_90).
const VERSION: &str = ".version 7.8";
const TARGET: &str = ".target sm_90";
const PROLOGUE: &str = "\tgriddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n";
/// The comment `gpu::device::dependent_launch_wait` leaves in the sm_80 module.
pub const MARKER: &str = "// dependent launch: wait";

/// The sm_80 module `ptx` rewritten for sm_90 with PDL at every entry point, or an error naming what
/// was not where it was expected.
pub fn dependent_launch_variant(ptx: &str) -> Result<String, String> {
    let mut out = String::with_capacity(ptx.len() + 4096);
    let (mut version, mut target, mut entries) = (false, false, 0usize);
    // Entry points (by order) whose body has the marker: they wait there instead of at the top.
    let mut marked = Vec::new();
    for line in ptx.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(".visible .entry ") || trimmed.starts_with(".entry ") {
            marked.push(false);
        } else if trimmed == MARKER
            && let Some(last) = marked.last_mut()
        {
            *last = true;
        }
    }
    // States: inside an entry's parameter list; in its declarations.
    let (mut in_params, mut in_decls, mut entry) = (false, false, 0usize);
    for line in ptx.lines() {
        let trimmed = line.trim_start();
        if !version && trimmed.starts_with(".version ") {
            out.push_str(VERSION);
            out.push('\n');
            version = true;
            continue;
        }
        if !target && trimmed.starts_with(".target ") {
            if trimmed != ".target sm_80" {
                return Err(format!("expected `.target sm_80`, found `{trimmed}`"));
            }
            out.push_str(TARGET);
            out.push('\n');
            target = true;
            continue;
        }
        if trimmed == MARKER {
            out.push_str(PROLOGUE);
            continue;
        }
        if in_decls {
            let declaration = trimmed.starts_with(".reg ")
                || trimmed.starts_with(".local ")
                || trimmed.starts_with(".shared ")
                || trimmed.starts_with("//")
                || trimmed.is_empty();
            if !declaration {
                if !marked[entry - 1] {
                    out.push_str(PROLOGUE);
                }
                entries += 1;
                in_decls = false;
            }
        }
        out.push_str(line);
        out.push('\n');
        if trimmed.starts_with(".visible .entry ") || trimmed.starts_with(".entry ") {
            in_params = true;
            entry += 1;
        } else if in_params && line == "{" {
            in_params = false;
            in_decls = true;
        }
    }
    if !version || !target {
        return Err("the module has no .version or .target line".to_string());
    }
    if in_params || in_decls {
        return Err("the module ends inside an entry point".to_string());
    }
    let declared = marked.len();
    if entries != declared {
        return Err(format!("{declared} entry points but {entries} prologues inserted"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = "//\n.version 7.0\n.target sm_80\n.address_size 64\n\n\
        .func (.param .b32 r) helper(\n\t.param .b32 a\n)\n{\n\t.reg .b32 \t%r<2>;\n\tret;\n}\n\n\
        .visible .entry first(\n\t.param .u64 p\n)\n{\n\t.reg .pred \t%p<2>;\n\t.reg .b32 \t%r<3>;\n\n\
        \tld.param.u64 \t%rd1, [p];\n\tret;\n\n}\n\
        .visible .entry second()\n{\n\tret;\n}\n\
        .visible .entry third()\n{\n\t.reg .b64 \t%rd<2>;\n\tprefetch.global.L2 [%rd1];\n\t// begin inline asm\n\
        \t// dependent launch: wait\n\t// end inline asm\n\tld.global.u64 \t%rd1, [%rd1];\n\tret;\n}\n";

    #[test]
    fn every_entry_waits_before_its_first_instruction() {
        let out = dependent_launch_variant(MODULE).unwrap();
        assert!(out.contains(".version 7.8\n.target sm_90\n"));
        assert_eq!(out.matches("griddepcontrol.wait;").count(), 3);
        // In `first` the prologue comes after the declarations, right before the first load.
        let wait = out.find("griddepcontrol.wait;").unwrap();
        assert!(out.find("%r<3>").unwrap() < wait && wait < out.find("ld.param.u64").unwrap());
        // The helper function (not an entry point) is untouched.
        let helper = &out[out.find(".func").unwrap()..out.find(".visible .entry first").unwrap()];
        assert!(!helper.contains("griddepcontrol"));
        // The trigger follows the wait.
        assert!(out.find("launch_dependents").unwrap() > wait);
    }

    #[test]
    fn a_marked_entry_waits_at_its_marker_only() {
        let out = dependent_launch_variant(MODULE).unwrap();
        let third = &out[out.find(".visible .entry third").unwrap()..];
        assert_eq!(third.matches("griddepcontrol.wait;").count(), 1);
        let wait = third.find("griddepcontrol.wait;").unwrap();
        assert!(third.find("prefetch.global.L2").unwrap() < wait && wait < third.find("ld.global").unwrap());
        assert!(!out.contains(MARKER));
    }

    #[test]
    fn a_module_for_another_target_is_refused() {
        let other = MODULE.replace("sm_80", "sm_75");
        assert!(dependent_launch_variant(&other).unwrap_err().contains("sm_75"));
    }

    #[test]
    fn the_real_module_gets_one_prologue_per_entry() {
        let out = dependent_launch_variant(crate::PTX).unwrap();
        // A kernel may have the marker on several branches (one is taken), so count entry points
        // that wait at least once rather than waits.
        let bodies: Vec<&str> = out.split(".visible .entry ").skip(1).collect();
        assert_eq!(bodies.len(), crate::PTX.matches(".visible .entry ").count());
        for body in &bodies {
            let name = body.split('(').next().unwrap_or_default();
            assert!(body.contains("griddepcontrol.wait;"), "{name} never waits");
            assert!(body.contains("griddepcontrol.launch_dependents;"), "{name} never triggers");
        }
        assert_eq!(out, crate::PTX_SM90);
    }
}
