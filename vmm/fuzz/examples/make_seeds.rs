//! Writes the seed corpora of the boot loader targets. Usage: make_seeds CORPUS_DIR
//! - ELF kernels: guest-tools' built guests (64-bit ELF, 64-bit ELF with a PVH note, ELF32 with a
//!   Multiboot header and a PVH note), stripped with `objcopy --strip-all` to stay small;
//! - a minimal bzImage: a setup header (boot protocol 2.15, 64-bit entry) and a tiny kernel.
//!
//! `kernel_loader` inputs start with an initrd length byte (KiB).
use std::fs;
use std::path::Path;
use std::process::Command;

fn stripped(path: &Path, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(path.file_name().expect("a file name"));
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(path)
        .arg(&out)
        .status()
        .expect("running objcopy");
    assert!(status.success(), "objcopy failed on {}", path.display());
    fs::read(&out).expect("reading the stripped ELF")
}

/// A bzImage as linux-loader parses it: boot sector signature, "HdrS", version, LOADED_HIGH,
/// XLF_KERNEL_64, and `setup_sects` sectors of real-mode setup before the protected-mode code.
fn tiny_bzimage() -> Vec<u8> {
    let setup_sects = 4u8;
    let kernel_offset = (usize::from(setup_sects) + 1) * 512;
    let mut image = vec![0u8; kernel_offset + 4096];
    let mut put = |at: usize, bytes: &[u8]| image[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[setup_sects]);
    put(0x1f4, &(4096u32 / 16).to_le_bytes()); // syssize, 16-byte units
    put(0x1fe, &0xaa55u16.to_le_bytes());
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes());
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x22c, &0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x234, &[1]); // relocatable_kernel
    put(0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &2048u32.to_le_bytes()); // cmdline_size
    put(0x258, &0x100_0000u64.to_le_bytes()); // pref_address
    put(0x260, &0x10_0000u32.to_le_bytes()); // init_size
                                             // The kernel: `hlt; jmp .` at the 64-bit entry (0x200 into the protected-mode code).
    put(kernel_offset + 0x200, &[0xf4, 0xeb, 0xfd]);
    image
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: make_seeds CORPUS_DIR");
    let out = Path::new(&out);
    let scratch = std::env::temp_dir().join(format!("vmm-fuzz-seeds-{}", std::process::id()));
    fs::create_dir_all(&scratch).expect("creating a scratch directory");
    let mut kernels = Vec::new();
    for name in ["hello", "hello-pvh", "pvh-hello"] {
        let path = guest_tools::guest_path(name).expect("a built guest");
        kernels.push((name.to_string(), stripped(&path, &scratch)));
    }
    kernels.push(("bzimage".to_string(), tiny_bzimage()));
    fs::remove_dir_all(&scratch).expect("removing the scratch directory");

    let elf_dir = out.join("elf_parser");
    let loader_dir = out.join("kernel_loader");
    fs::create_dir_all(&elf_dir).expect("creating the corpus directory");
    fs::create_dir_all(&loader_dir).expect("creating the corpus directory");
    for (name, kernel) in &kernels {
        if kernel.starts_with(b"\x7fELF") {
            fs::write(elf_dir.join(name), kernel).expect("writing a seed");
        }
        for initrd_kib in [0u8, 4] {
            let mut input = vec![initrd_kib];
            input.extend_from_slice(kernel);
            let file = loader_dir.join(format!("{name}-initrd-{initrd_kib}k"));
            fs::write(file, input).expect("writing a seed");
        }
    }
}
