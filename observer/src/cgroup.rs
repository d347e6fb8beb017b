//! Finding the cgroup v2 hierarchy the programs attach to.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// `statfs(2)` magic of cgroup2 filesystems.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Why no cgroup v2 hierarchy can be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Auto-detection found nothing.
    #[error("no cgroup v2 mount found in /proc/self/mountinfo; mount cgroup2 or pass --cgroup")]
    NotFound,
    /// `--cgroup` names something else.
    #[error("--cgroup {0} is not a cgroup v2 mount")]
    NotCgroup2(PathBuf),
    /// `--cgroup` cannot be inspected.
    #[error("--cgroup {path}: {source}")]
    Inaccessible {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The cgroup v2 directory to attach to: `configured` if given (checked),
/// else the first cgroup2 mount of this mount namespace.
pub fn resolve(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let path = match configured {
        Some(p) => p.to_owned(),
        None => detect()?,
    };
    if !is_cgroup2(&path)? {
        return Err(CgroupError::NotCgroup2(path));
    }
    Ok(path)
}

fn detect() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NotFound)?;
    find_cgroup2(&info).ok_or(CgroupError::NotFound)
}

/// The mount point of the first `cgroup2` line of a mountinfo text.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 25 0:31 / /sys/fs/cgroup/unified rw,... - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn is_cgroup2(path: &Path) -> Result<bool, CgroupError> {
    let magic = crate::sys::fs_type(path).map_err(|source| CgroupError::Inaccessible {
        path: path.to_owned(),
        source,
    })?;
    Ok(magic == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            find_cgroup2(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_cgroup2("25 30 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        let spaced = "36 35 0:31 / /my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(spaced), Some(PathBuf::from("/my cgroup")));
    }

    #[test]
    fn rejects_what_is_not_cgroup2() {
        let err = resolve(Some(Path::new("/proc"))).unwrap_err();
        assert_eq!(err.to_string(), "--cgroup /proc is not a cgroup v2 mount");
        let err = resolve(Some(Path::new("/nonexistent/cg"))).unwrap_err();
        assert!(
            err.to_string().starts_with("--cgroup /nonexistent/cg: "),
            "{err}"
        );
    }
}
