//! Lets the datapath read `skb->ip_summed` (see `gateway_common::kern_ctx`): finds the kfunc
//! `bpf_cast_to_kern_ctx` and the bit offset of `ip_summed` in the running kernel's BTF, and
//! rewrites the object's placeholder calls into calls of that kfunc.
//!
//! aya reads BTF but keeps struct members to itself, and the BTF crates that expose them are
//! LGPL; the little needed here (one function id, one member offset) is read directly.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use gateway_common::kern_ctx::CAST_PLACEHOLDER;
use object::{Object, ObjectSection, SectionKind};

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const KFUNC: &str = "bpf_cast_to_kern_ctx";

/// What the datapath needs from the running kernel to read `ip_summed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernCtx {
    /// BTF id of `bpf_cast_to_kern_ctx`.
    pub cast_btf_id: u32,
    /// Bit offset of `ip_summed` in `struct sk_buff`.
    pub ip_summed_at: u32,
}

impl KernCtx {
    /// From the BTF at `path` (normally [`VMLINUX_BTF`]).
    pub fn from_btf_file(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_btf(&data).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_btf(data: &[u8]) -> Result<Self> {
        let btf = Btf::parse(data)?;
        let cast_btf_id = btf
            .find(KIND_FUNC, KFUNC)
            .with_context(|| format!("no kfunc {KFUNC} (kernel older than 6.3?)"))?;
        let sk_buff = btf
            .find(KIND_STRUCT, "sk_buff")
            .context("no struct sk_buff")?;
        let ip_summed_at = btf
            .member_bit_offset(sk_buff, "ip_summed")?
            .context("struct sk_buff has no member ip_summed")?;
        // 0 means "unknown" to the datapath; sk_buff starts with list pointers anyway.
        ensure!(ip_summed_at != 0, "ip_summed at bit offset 0");
        Ok(Self {
            cast_btf_id,
            ip_summed_at,
        })
    }
}

/// A copy of the eBPF object `elf` with every placeholder call turned into a call of the kfunc
/// `cast_btf_id`.
pub fn patch_object(elf: &[u8], cast_btf_id: u32) -> Result<Vec<u8>> {
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const PSEUDO_KFUNC_CALL: u8 = 2; // src_reg of a kfunc call (imm: BTF id in vmlinux)
    let file = object::File::parse(elf).context("parsing the eBPF object")?;
    let mut patched = elf.to_vec();
    let mut calls = 0;
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let Some((start, len)) = section.file_range() else {
            continue;
        };
        let code = &mut patched[start as usize..(start + len) as usize];
        for insn in code.chunks_exact_mut(8) {
            let imm = i32::from_le_bytes(insn[4..8].try_into().unwrap());
            if insn[0] == CALL && insn[1] == 0 && imm == CAST_PLACEHOLDER {
                insn[1] = PSEUDO_KFUNC_CALL << 4;
                insn[4..8].copy_from_slice(&cast_btf_id.to_le_bytes());
                calls += 1;
            }
        }
    }
    ensure!(calls > 0, "the eBPF object calls no {KFUNC} placeholder");
    Ok(patched)
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;

/// The type section of a BTF blob, indexed by type id (include/uapi/linux/btf.h).
struct Btf<'a> {
    strings: &'a [u8],
    /// Byte offset of each type's record in `types`; id 0 is `void`.
    offsets: Vec<usize>,
    types: &'a [u8],
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self> {
        let u32_at = |off: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(off..off + 4)
                    .context("BTF header truncated")?
                    .try_into()?,
            ))
        };
        ensure!(
            data.len() >= 24 && u16::from_le_bytes([data[0], data[1]]) == 0xeb9f,
            "not little-endian BTF"
        );
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .context("BTF section out of bounds")
        };
        let (types, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let mut offsets = vec![0];
        let mut off = 0;
        while off < types.len() {
            offsets.push(off);
            let info = read_u32(types, off + 4)?;
            let vlen = (info & 0xffff) as usize;
            off += 12
                + match (info >> 24) & 0x1f {
                    1 | 14 | 17 => 4,             // int, var, decl_tag
                    3 => 12,                      // array
                    4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                    6 | 13 => 8 * vlen,           // enum, func_proto
                    0 | 2 | 7..=12 | 16 | 18 => 0,
                    kind => bail!("unknown BTF kind {kind} at type {}", offsets.len() - 1),
                };
        }
        Ok(Self {
            strings,
            offsets,
            types,
        })
    }

    fn kind(&self, id: u32) -> Result<u32> {
        Ok((read_u32(self.types, self.record(id)? + 4)? >> 24) & 0x1f)
    }

    fn record(&self, id: u32) -> Result<usize> {
        match self.offsets.get(id as usize) {
            Some(&off) if id != 0 => Ok(off),
            _ => bail!("no BTF type {id}"),
        }
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let rest = self.strings.get(name_off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The first type of `kind` named `name`.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..self.offsets.len() as u32).find(|&id| {
            let off = self.offsets[id as usize];
            self.kind(id).ok() == Some(kind)
                && read_u32(self.types, off).is_ok_and(|n| self.name(n) == name.as_bytes())
        })
    }

    /// Bit offset of member `name` in struct or union `id`, looking into anonymous members.
    fn member_bit_offset(&self, id: u32, name: &str) -> Result<Option<u32>> {
        let off = self.record(id)?;
        let info = read_u32(self.types, off + 4)?;
        let bitfields = info >> 31 == 1;
        for i in 0..(info & 0xffff) as usize {
            let member = off + 12 + 12 * i;
            let name_off = read_u32(self.types, member)?;
            let ty = read_u32(self.types, member + 4)?;
            let offset = read_u32(self.types, member + 8)?;
            let bit_offset = if bitfields {
                offset & 0xff_ffff
            } else {
                offset
            };
            if name_off != 0 {
                if self.name(name_off) == name.as_bytes() {
                    return Ok(Some(bit_offset));
                }
            } else if matches!(self.kind(ty)?, KIND_STRUCT | KIND_UNION)
                && let Some(inner) = self.member_bit_offset(ty, name)?
            {
                return Ok(Some(bit_offset + inner));
            }
        }
        Ok(None)
    }
}

fn read_u32(data: &[u8], off: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        data.get(off..off + 4)
            .context("BTF type truncated")?
            .try_into()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob shaped like the kernel's: `ip_summed` is a bitfield in an anonymous
    /// struct inside an anonymous union of `sk_buff`.
    fn sk_buff_like_btf() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |s: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let (u8_, pkt_type, ip_summed, headers, sk_buff, next, kfunc) = (
            name("u8"),
            name("pkt_type"),
            name("ip_summed"),
            name("headers"),
            name("sk_buff"),
            name("next"),
            name(KFUNC),
        );
        let info = |kind: u32, vlen: u32, kflag: bool| (kflag as u32) << 31 | kind << 24 | vlen;
        let types: Vec<u32> = [
            vec![u8_, info(1, 0, false), 1, 8],                    // 1: int u8
            vec![0, info(4, 2, true), 1],                          // 2: anon struct
            vec![pkt_type, 1, 3 << 24],                            //    pkt_type:3
            vec![ip_summed, 1, 2 << 24 | 5],                       //    ip_summed:2 at bit 5
            vec![0, info(5, 2, false), 1, 0, 2, 0, headers, 2, 0], // 3: anon union
            vec![sk_buff, info(4, 2, false), 200, next, 1, 0, 0, 3, 1024], // 4: sk_buff
            vec![0, info(13, 0, false), 0],                        // 5: func proto
            vec![kfunc, info(12, 0, false), 5],                    // 6: func
        ]
        .concat();
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xeb9fu16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn ip_summed_is_found_through_anonymous_members_and_bitfields() {
        let found = KernCtx::from_btf(&sk_buff_like_btf()).unwrap();
        assert_eq!(
            found,
            KernCtx {
                cast_btf_id: 6,
                ip_summed_at: 1024 + 5
            }
        );
    }

    #[test]
    fn a_kernel_without_the_kfunc_is_named() {
        let mut blob = sk_buff_like_btf();
        let at = blob.len() - KFUNC.len() - 1;
        blob[at] = b'x';
        let err = format!("{:#}", KernCtx::from_btf(&blob).unwrap_err());
        assert!(err.contains("no kfunc bpf_cast_to_kern_ctx"), "{err}");
        assert!(KernCtx::from_btf(&blob[..40]).is_err());
    }

    #[test]
    fn the_running_kernel_has_the_kfunc_and_ip_summed() {
        let found = KernCtx::from_btf_file(Path::new(VMLINUX_BTF)).unwrap();
        let out = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
            .unwrap();
        let raw = String::from_utf8(out.stdout).unwrap();
        let func = format!("] FUNC '{KFUNC}' ");
        let line = raw.lines().find(|l| l.contains(&func)).unwrap();
        let id: u32 = line[1..line.find(']').unwrap()].parse().unwrap();
        assert_eq!(found.cast_btf_id, id);
        // Two bits in the byte bpftool shows `ip_summed` in (its offset inside the
        // anonymous `headers` struct), past sk_buff's list pointers.
        let bits = raw
            .lines()
            .find_map(|l| l.trim().strip_prefix("'ip_summed' type_id="))
            .and_then(|l| l.split("bits_offset=").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .unwrap();
        assert_eq!(found.ip_summed_at % 8, bits.parse::<u32>().unwrap() % 8);
        assert!(found.ip_summed_at > 64 * 8, "{found:?}");
    }

    #[test]
    fn placeholder_calls_become_kfunc_calls() {
        let patched = patch_object(super::super::object::OBJECT, 4242).unwrap();
        let call = |src: u8, imm: i32| {
            let mut insn = [0x85, src << 4, 0, 0, 0, 0, 0, 0];
            insn[4..].copy_from_slice(&imm.to_le_bytes());
            insn
        };
        let count = |elf: &[u8], insn: [u8; 8]| elf.chunks_exact(8).filter(|c| *c == insn).count();
        let placeholders = count(super::super::object::OBJECT, call(0, CAST_PLACEHOLDER));
        // Ingress and egress each rewrite through it.
        assert!(placeholders >= 2, "{placeholders}");
        assert_eq!(count(&patched, call(0, CAST_PLACEHOLDER)), 0);
        assert_eq!(count(&patched, call(2, 4242)), placeholders);
        assert_eq!(patched.len(), super::super::object::OBJECT.len());
    }
}
