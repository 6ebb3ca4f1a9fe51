//! Test data: incompressible files and trees, and byte-exact comparisons.

use std::path::Path;

/// `len` pseudo-random bytes from `seed` (xorshift: fast, incompressible, reproducible).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file of `len` pseudo-random bytes.
pub fn file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, bytes(len, seed)).expect("write test file");
}

/// A tree with `small` files of a few KiB in nested directories and one file of `big` bytes.
pub fn tree(root: &Path, small: usize, big: usize) {
    for i in 0..small {
        let dir = root.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&dir).expect("mkdir");
        file(
            &dir.join(format!("f{i}.bin")),
            100 + (i * 37) % 5000,
            i as u64,
        );
    }
    file(&root.join("big.bin"), big, 0xB16);
}

/// Panics unless both files hold the same bytes.
pub fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a).expect("read a"),
        std::fs::read(b).expect("read b"),
    );
    assert!(
        x == y,
        "{} ({} bytes) and {} ({} bytes) differ",
        a.display(),
        x.len(),
        b.display(),
        y.len()
    );
}

/// Panics unless both trees hold the same files with the same bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (la, lb) = (list(a, a), list(b, b));
    assert_eq!(
        la,
        lb,
        "trees {} and {} list different files",
        a.display(),
        b.display()
    );
    for rel in la {
        assert_same_file(&a.join(&rel), &b.join(&rel));
    }
}

fn list(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(list(root, &path));
        } else {
            out.push(
                path.strip_prefix(root)
                    .expect("prefix")
                    .display()
                    .to_string(),
            );
        }
    }
    out.sort();
    out
}
