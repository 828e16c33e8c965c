//! Field offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs cannot use CO-RE relocations here, so at load time
//! userspace looks up the byte offsets of the few kernel struct fields they
//! read and hands them to the programs as globals.
//!
//! This is a small, hand-written reader of the raw BTF format described in
//! the kernel's `Documentation/bpf/btf.rst`: aya-obj keeps its type lookup
//! crate-private and btf-rs is LGPL. It decodes the header, walks every type
//! record once (to index names and to skip each kind's trailing data), and
//! reads struct/union members on demand. Split BTF (kernel modules, which
//! need vmlinux as their base) is not supported.

// The tcp signal will use this to resolve its kernel offsets; until it does,
// parts of the module are only used by its tests.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    io,
    ops::Range,
    path::PathBuf,
};

use thiserror::Error;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
/// Size of `struct btf_header` as first defined; later kernels may append
/// fields, which `hdr_len` accounts for.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type` (`name_off`, `info`, `size_or_type`).
const TYPE_LEN: usize = 12;
/// Size of `struct btf_member` (`name_off`, `type`, `offset`).
const MEMBER_LEN: usize = 12;
/// Bounds the typedef/qualifier chains and the anonymous nesting followed,
/// so a malformed (cyclic) blob cannot make a lookup loop forever.
const MAX_DEPTH: usize = 64;

/// `BTF_KIND_*` values (`info` bits 24-28).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// Why the BTF could not be read, or a field could not be resolved (the
/// lookup errors name the struct, the path and the missing member).
#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not BTF data: magic {0:#06x}, expected 0xeb9f")]
    BadMagic(u16),
    #[error("unsupported BTF version {0}, expected 1")]
    UnsupportedVersion(u8),
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("malformed BTF: type {id} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("invalid field path `{path}` for `{strukt}`")]
    BadPath { strukt: String, path: String },
    #[error("kernel BTF has no struct or union `{strukt}` (looking up `{strukt}.{path}`)")]
    NoStruct { strukt: String, path: String },
    #[error("kernel BTF: `{strukt}` has no field `{path}` (no member `{missing}`)")]
    NoField {
        strukt: String,
        path: String,
        /// The path component that was not found.
        missing: String,
    },
    #[error("kernel BTF: `{strukt}.{path}`: `{member}` is not a struct or union")]
    NotComposite {
        strukt: String,
        path: String,
        /// The path prefix that cannot be descended into.
        member: String,
    },
    #[error(
        "kernel BTF: `{strukt}.{path}` is a bitfield ({bit_size} bits at bit \
         {bit_offset}), not a byte offset; use `field`"
    )]
    Bitfield {
        strukt: String,
        path: String,
        bit_offset: u32,
        bit_size: u32,
    },
    #[error("kernel BTF: the type of `{strukt}.{path}` has no size")]
    NoSize { strukt: String, path: String },
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed(what.into())
}

/// Where a member lies inside the outermost struct of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Offset of the member's first bit from the start of the struct
    /// (bit `n` is bit `n % 8` of byte `n / 8`, counting from the least
    /// significant bit, as the kernel lays out bitfields on little-endian).
    pub bit_offset: u32,
    /// Width of a bitfield; 0 if the member is not a bitfield.
    pub bit_size: u32,
    /// Size of the member's type with typedefs and qualifiers resolved; for a
    /// bitfield, its declared storage type (1 for `__u8 x:5`). Pointers count
    /// as this process's pointer size.
    pub byte_size: u32,
}

impl Field {
    pub fn is_bitfield(&self) -> bool {
        self.bit_size != 0
    }
}

/// A type record: the `btf_type` words and where its kind-specific data starts.
#[derive(Clone, Copy, Debug)]
struct RawType {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Absolute offset of the data following the record.
    extra: usize,
}

impl RawType {
    const VOID: RawType = RawType {
        name_off: 0,
        info: 0,
        size_or_type: 0,
        extra: 0,
    };

    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }

    fn is_composite(&self) -> bool {
        matches!(self.kind(), kind::STRUCT | kind::UNION)
    }
}

/// One `btf_member`, its offset decoded per the parent's `kind_flag`.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// From the kind_flag encoding only (0: not a bitfield, or legacy encoding).
    bitfield_size: u32,
}

/// A resolved member path.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    bit_offset: u32,
    bit_size: u32,
    type_id: u32,
}

/// Type names are indexed by their FNV-1a hash (already well mixed, so the
/// map uses it as is) rather than by owned strings: no allocation per name
/// keeps loading vmlinux's ~100k names fast.
type NameIndex = HashMap<u64, u32, BuildHasherDefault<PrehashedHasher>>;

fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `NameIndex`; stay correct regardless.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The kernel's type information, indexed by name.
pub struct KernelBtf {
    data: Vec<u8>,
    big_endian: bool,
    /// The string section, within `data`.
    strings: Range<usize>,
    /// Offset in `data` of each type record, indexed by type id; id 0 is
    /// `void`, which has no record.
    types: Vec<u32>,
    /// Lowest type id whose name has a given hash.
    by_name: NameIndex,
    /// Next higher type id with a name of the same hash, 0 at the end (a
    /// name can have several types, e.g. a forward declaration and the
    /// definition).
    next_same_hash: Vec<u32>,
}

impl KernelBtf {
    /// Reads the running kernel's BTF from `/sys/kernel/btf/vmlinux`.
    pub fn load() -> Result<Self, BtfError> {
        let data = std::fs::read(VMLINUX_BTF).map_err(|source| BtfError::Io {
            path: VMLINUX_BTF.into(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses raw BTF (as in `/sys/kernel/btf/vmlinux`), in either byte order.
    pub fn from_bytes(data: &[u8]) -> Result<Self, BtfError> {
        Self::parse(data.to_vec())
    }

    /// Byte offset of a member inside a struct or union, e.g.
    /// `("sock_common", "skc_net.net")` or `("sk_buff", "cb")`.
    ///
    /// `path` is a dot-separated list of named members. Anonymous struct and
    /// union members are searched transparently (`sock_common.skc_daddr`
    /// lives in an anonymous union), and typedefs and qualifiers are resolved
    /// to reach the struct each further component is looked up in. Pointers
    /// are not followed. `strukt` may also name a typedef of a struct
    /// (`possible_net_t`). Bitfields that do not start on a byte are an
    /// error; use [`KernelBtf::field`] for those.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let found = self.walk(strukt, path)?;
        if found.bit_size != 0 || found.bit_offset % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.into(),
                path: path.into(),
                bit_offset: found.bit_offset,
                bit_size: found.bit_size,
            });
        }
        Ok(found.bit_offset / 8)
    }

    /// Bit offset, bitfield width and type size of a member, looked up as in
    /// [`KernelBtf::offset_of`] (for bitfields, e.g.
    /// `inet_connection_sock.icsk_ca_state`).
    pub fn field(&self, strukt: &str, path: &str) -> Result<Field, BtfError> {
        let found = self.walk(strukt, path)?;
        let byte_size = self
            .size_of(found.type_id)?
            .ok_or_else(|| BtfError::NoSize {
                strukt: strukt.into(),
                path: path.into(),
            })?;
        Ok(Field {
            bit_offset: found.bit_offset,
            bit_size: found.bit_size,
            byte_size,
        })
    }

    /// The chain from a task to its cgroup v2 id
    /// (`task->cgroups->dfl_cgrp->kn->id`).
    pub fn cgroup_chain(&self) -> Result<hostscope_common::task::CgroupChain, BtfError> {
        Ok(hostscope_common::task::CgroupChain {
            task_cgroups: self.offset_of("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.offset_of("css_set", "dfl_cgrp")?,
            cgroup_kn: self.offset_of("cgroup", "kn")?,
            kernfs_node_id: self.offset_of("kernfs_node", "id")?,
        })
    }

    /// Whether a named type of any kind exists (e.g. the typedef
    /// `btf_trace_tcp_sendmsg_locked`, present when that tracepoint is).
    pub fn has_type(&self, name: &str) -> bool {
        self.ids_named(name).next().is_some()
    }

    /// In an eBPF object's BTF (a BTF-defined map in the `.maps` section):
    /// the byte offset in this blob of the element count of the array type
    /// that member `member` of map `map` points to; such counts carry the
    /// map's definition (`type`, `max_entries`, ...). None when anything is
    /// not shaped so.
    pub fn map_def_array_len_at(&self, map: &str, member: &str) -> Option<usize> {
        for sec in self.ids_named(".maps") {
            let sec = self.ty(sec).ok()?;
            if sec.kind() != kind::DATASEC {
                continue;
            }
            for v in 0..sec.vlen() {
                let var = self.ty(self.u32_at(sec.extra + v * 12)).ok()?;
                if var.kind() != kind::VAR || self.bytes_at(var.name_off).ok()? != map.as_bytes() {
                    continue;
                }
                let def = self.ty(var.size_or_type).ok()?;
                if def.kind() != kind::STRUCT {
                    return None;
                }
                let m = (0..def.vlen())
                    .map(|i| def.extra + i * MEMBER_LEN)
                    .find(|&m| self.bytes_at(self.u32_at(m)).ok() == Some(member.as_bytes()))?;
                let ptr = self.ty(self.u32_at(m + 4)).ok()?;
                let array = self
                    .ty(ptr.size_or_type)
                    .ok()
                    .filter(|_| ptr.kind() == kind::PTR)?;
                // `btf_array`: type, index_type, nelems.
                return (array.kind() == kind::ARRAY).then_some(array.extra + 8);
            }
        }
        None
    }

    /// Whether each argument of tracepoint `name` is a pointer, from its
    /// `btf_trace_<name>` typedef (the hidden first `void *` left out);
    /// None when the kernel has no such tracepoint. Tracepoints whose
    /// arguments changed between kernels (`mark_victim`: a pid, later a
    /// task) are told apart by this.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<bool>> {
        let id = self.ids_named(&format!("btf_trace_{name}")).next()?;
        let ptr = self.resolve(id).ok()?;
        let proto = self.resolve(self.ty(ptr).ok()?.size_or_type).ok()?;
        let t = self.ty(proto).ok()?;
        if t.kind() != kind::FUNC_PROTO {
            return None;
        }
        let mut args = Vec::with_capacity(t.vlen());
        for i in 1..t.vlen() {
            let param_type = self.u32_at(t.extra + i * 8 + 4);
            let resolved = self.resolve(param_type).ok()?;
            args.push(self.ty(resolved).ok()?.kind() == kind::PTR);
        }
        Some(args)
    }

    fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes is shorter than the header",
                data.len()
            )));
        }
        let big_endian = match u16::from_le_bytes([data[0], data[1]]) {
            MAGIC => false,
            m if m == MAGIC.swap_bytes() => true,
            m => return Err(BtfError::BadMagic(m)),
        };
        if data[2] != VERSION {
            return Err(BtfError::UnsupportedVersion(data[2]));
        }
        let mut btf = KernelBtf {
            data,
            big_endian,
            strings: 0..0,
            types: Vec::new(),
            by_name: NameIndex::default(),
            next_same_hash: Vec::new(),
        };
        if u32::try_from(btf.data.len()).is_err() {
            return Err(malformed("larger than 4 GiB"));
        }
        let hdr_len = btf.u32_at(4) as usize;
        if hdr_len < HEADER_LEN || hdr_len > btf.data.len() {
            return Err(malformed(format!("header length {hdr_len}")));
        }
        let section = |off: u32, len: u32, what: &str| {
            let start = hdr_len.checked_add(off as usize);
            let end = start.and_then(|s| s.checked_add(len as usize));
            match (start, end) {
                (Some(start), Some(end)) if end <= btf.data.len() => Ok(start..end),
                _ => Err(malformed(format!(
                    "{what} section ({len} bytes at {off}) extends past the end"
                ))),
            }
        };
        let types = section(btf.u32_at(8), btf.u32_at(12), "type")?;
        btf.strings = section(btf.u32_at(16), btf.u32_at(20), "string")?;
        btf.index_types(types)?;
        Ok(btf)
    }

    /// Records where every type is and indexes the named ones.
    fn index_types(&mut self, section: Range<usize>) -> Result<(), BtfError> {
        // vmlinux averages ~45 bytes per type.
        let mut types = Vec::with_capacity(section.len() / 32 + 1);
        types.push(0);
        let mut pos = section.start;
        while pos < section.end {
            let id = u32::try_from(types.len()).map_err(|_| malformed("too many types"))?;
            if section.end - pos < TYPE_LEN {
                return Err(malformed(format!("type {id} is truncated")));
            }
            let t = self.record_at(pos);
            let vlen = t.vlen();
            let extra_len = match t.kind() {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => vlen * 12,
                kind::ENUM | kind::FUNC_PROTO => vlen * 8,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                k => return Err(BtfError::UnknownKind { id, kind: k }),
            };
            if section.end - t.extra < extra_len {
                return Err(malformed(format!("type {id} is truncated")));
            }
            // `data` is under 4 GiB (checked in `parse`).
            types.push(pos as u32);
            pos = t.extra + extra_len;
        }
        // Highest id first, so each chain ends up in ascending id order.
        let mut by_name = NameIndex::with_capacity_and_hasher(types.len(), Default::default());
        let mut next_same_hash = vec![0; types.len()];
        for (id, &pos) in types.iter().enumerate().skip(1).rev() {
            let name = self.bytes_at(self.record_at(pos as usize).name_off)?;
            if !name.is_empty()
                && let Some(next) = by_name.insert(name_hash(name), id as u32)
            {
                next_same_hash[id] = next;
            }
        }
        self.types = types;
        self.by_name = by_name;
        self.next_same_hash = next_same_hash;
        Ok(())
    }

    /// Type ids called `name`, in ascending order.
    fn ids_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let mut next = if name.is_empty() {
            0
        } else {
            self.by_name
                .get(&name_hash(name.as_bytes()))
                .copied()
                .unwrap_or(0)
        };
        std::iter::from_fn(move || {
            while next != 0 {
                let id = next;
                next = self.next_same_hash[id as usize];
                // Names were checked when indexed.
                let t = self.record_at(self.types[id as usize] as usize);
                if self.bytes_at(t.name_off).ok() == Some(name.as_bytes()) {
                    return Some(id);
                }
            }
            None
        })
    }

    fn record_at(&self, pos: usize) -> RawType {
        RawType {
            name_off: self.u32_at(pos),
            info: self.u32_at(pos + 4),
            size_or_type: self.u32_at(pos + 8),
            extra: pos + TYPE_LEN,
        }
    }

    fn u32_at(&self, pos: usize) -> u32 {
        let bytes = [
            self.data[pos],
            self.data[pos + 1],
            self.data[pos + 2],
            self.data[pos + 3],
        ];
        if self.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    }

    /// The NUL-terminated string at `off` in the string section.
    fn bytes_at(&self, off: u32) -> Result<&[u8], BtfError> {
        let strings = &self.data[self.strings.clone()];
        let tail = strings
            .get(off as usize..)
            .ok_or_else(|| malformed(format!("string offset {off} out of range")))?;
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("string at {off} is not terminated")))?;
        Ok(&tail[..len])
    }

    fn ty(&self, id: u32) -> Result<RawType, BtfError> {
        match self.types.get(id as usize) {
            Some(_) if id == 0 => Ok(RawType::VOID),
            Some(&pos) => Ok(self.record_at(pos as usize)),
            None => Err(malformed(format!("type id {id} out of range"))),
        }
    }

    /// Follows typedefs and qualifiers (const, volatile, restrict, type tags).
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(malformed(format!("type chain too long at type {id}")))
    }

    /// Size in bytes of a type, `None` for kinds without one (void, functions).
    fn size_of(&self, id: u32) -> Result<Option<u32>, BtfError> {
        let mut id = id;
        let mut count: u32 = 1;
        for _ in 0..MAX_DEPTH {
            let t = self.ty(self.resolve(id)?)?;
            let size = match t.kind() {
                kind::INT
                | kind::STRUCT
                | kind::UNION
                | kind::ENUM
                | kind::ENUM64
                | kind::FLOAT
                | kind::DATASEC => t.size_or_type,
                kind::PTR => size_of::<usize>() as u32,
                kind::ARRAY => {
                    // struct btf_array { u32 type; u32 index_type; u32 nelems; }
                    id = self.u32_at(t.extra);
                    count = count
                        .checked_mul(self.u32_at(t.extra + 8))
                        .ok_or_else(|| malformed("array size overflows"))?;
                    continue;
                }
                _ => return Ok(None),
            };
            return size
                .checked_mul(count)
                .map(Some)
                .ok_or_else(|| malformed("array size overflows"));
        }
        Err(malformed(format!("array nesting too deep at type {id}")))
    }

    fn members(&self, t: RawType) -> impl Iterator<Item = Member> + '_ {
        let kind_flag = t.kind_flag();
        (0..t.vlen()).map(move |i| {
            let pos = t.extra + i * MEMBER_LEN;
            let offset = self.u32_at(pos + 8);
            let (bit_offset, bitfield_size) = if kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            Member {
                name_off: self.u32_at(pos),
                type_id: self.u32_at(pos + 4),
                bit_offset,
                bitfield_size,
            }
        })
    }

    /// The struct or union called `name`: preferably a definition with
    /// members (there may be forward declarations or empty duplicates), then
    /// a typedef of one, then an empty one.
    fn find_composite(&self, name: &str) -> Result<Option<u32>, BtfError> {
        let (mut typedef, mut empty) = (None, None);
        for id in self.ids_named(name) {
            let t = self.ty(id)?;
            if t.is_composite() {
                if t.vlen() > 0 {
                    return Ok(Some(id));
                }
                empty.get_or_insert(id);
            } else if t.kind() == kind::TYPEDEF && typedef.is_none() {
                let target = self.resolve(id)?;
                let r = self.ty(target)?;
                if r.is_composite() && r.vlen() > 0 {
                    typedef = Some(target);
                }
            }
        }
        Ok(typedef.or(empty))
    }

    /// Finds the member `name` of a struct/union, looking into anonymous
    /// struct/union members; the offset is relative to `container`.
    fn find_member(
        &self,
        container: u32,
        name: &[u8],
        depth: usize,
    ) -> Result<Option<Resolved>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!(
                "anonymous members nested too deep in type {container}"
            )));
        }
        let t = self.ty(container)?;
        for m in self.members(t) {
            let member_name = self.bytes_at(m.name_off)?;
            if member_name.is_empty() {
                let inner = self.resolve(m.type_id)?;
                if !self.ty(inner)?.is_composite() {
                    continue;
                }
                if let Some(found) = self.find_member(inner, name, depth + 1)? {
                    let bit_offset = found
                        .bit_offset
                        .checked_add(m.bit_offset)
                        .ok_or_else(|| malformed("member offset overflows"))?;
                    return Ok(Some(Resolved {
                        bit_offset,
                        ..found
                    }));
                }
            } else if member_name == name {
                let (mut bit_offset, mut bit_size) = (m.bit_offset, m.bitfield_size);
                if !t.kind_flag() {
                    // Legacy encoding: a bitfield's member type is an INT
                    // whose data gives its bit offset and width
                    // (bits 16-23 and 0-7).
                    let int = self.ty(self.resolve(m.type_id)?)?;
                    if int.kind() == kind::INT {
                        let data = self.u32_at(int.extra);
                        let (int_offset, nr_bits) = ((data >> 16) & 0xff, data & 0xff);
                        if int_offset != 0 || nr_bits != int.size_or_type.saturating_mul(8) {
                            bit_offset = bit_offset
                                .checked_add(int_offset)
                                .ok_or_else(|| malformed("member offset overflows"))?;
                            bit_size = nr_bits;
                        }
                    }
                }
                return Ok(Some(Resolved {
                    bit_offset,
                    bit_size,
                    type_id: m.type_id,
                }));
            }
        }
        Ok(None)
    }

    /// Resolves `strukt.path`; the offset is relative to `strukt`.
    fn walk(&self, strukt: &str, path: &str) -> Result<Resolved, BtfError> {
        let components: Vec<&str> = path.split('.').collect();
        if components.iter().any(|c| c.is_empty()) {
            return Err(BtfError::BadPath {
                strukt: strukt.into(),
                path: path.into(),
            });
        }
        let mut container = self
            .find_composite(strukt)?
            .ok_or_else(|| BtfError::NoStruct {
                strukt: strukt.into(),
                path: path.into(),
            })?;
        let mut found: Option<Resolved> = None;
        for (i, component) in components.iter().enumerate() {
            if let Some(prev) = found {
                let target = self.resolve(prev.type_id)?;
                if prev.bit_size != 0 || !self.ty(target)?.is_composite() {
                    return Err(BtfError::NotComposite {
                        strukt: strukt.into(),
                        path: path.into(),
                        member: components[..i].join("."),
                    });
                }
                container = target;
            }
            let member = self
                .find_member(container, component.as_bytes(), 0)?
                .ok_or_else(|| BtfError::NoField {
                    strukt: strukt.into(),
                    path: path.into(),
                    missing: (*component).into(),
                })?;
            let base = found.map_or(0, |f| f.bit_offset);
            let bit_offset = base
                .checked_add(member.bit_offset)
                .ok_or_else(|| malformed("member offset overflows"))?;
            found = Some(Resolved {
                bit_offset,
                ..member
            });
        }
        // `components` is never empty: splitting yields at least one item.
        found.ok_or_else(|| BtfError::BadPath {
            strukt: strukt.into(),
            path: path.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command, time::Instant};

    use super::*;

    /// Builds a raw BTF blob by hand.
    struct Blob {
        big_endian: bool,
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    /// A kind_flag member offset: bitfield size in the top 8 bits.
    fn bitfield(bit_offset: u32, size: u32) -> u32 {
        size << 24 | bit_offset
    }

    impl Blob {
        fn new(big_endian: bool) -> Self {
            Blob {
                big_endian,
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn word(&mut self, v: u32) {
            let bytes = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.types.extend_from_slice(&bytes);
        }

        fn name(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        /// Appends a type record and returns its id.
        fn ty(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name = self.name(name);
            self.word(name);
            self.word(u32::from(kind_flag) << 31 | kind << 24 | vlen);
            self.word(size_or_type);
            for &w in extra {
                self.word(w);
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32, bit_offset: u32, bits: u32) -> u32 {
            self.ty(name, kind::INT, false, 0, size, &[bit_offset << 16 | bits])
        }

        /// A struct or union; members are (name, type id, offset word).
        fn composite(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(name, type_id, offset) in members {
                extra.extend([self.name(name), type_id, offset]);
            }
            self.ty(name, kind, kind_flag, members.len() as u32, size, &extra)
        }

        fn build(&self) -> Vec<u8> {
            let word = |v: u32| {
                if self.big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let magic = if self.big_endian {
                MAGIC.to_be_bytes()
            } else {
                MAGIC.to_le_bytes()
            };
            let mut out = Vec::new();
            out.extend_from_slice(&magic);
            out.extend_from_slice(&[VERSION, 0]);
            out.extend_from_slice(&word(HEADER_LEN as u32));
            out.extend_from_slice(&word(0));
            out.extend_from_slice(&word(self.types.len() as u32));
            out.extend_from_slice(&word(self.types.len() as u32));
            out.extend_from_slice(&word(self.strings.len() as u32));
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// ```c
    /// typedef unsigned char u8;
    /// struct demo;                          // FWD, then an empty duplicate
    /// struct inner { unsigned int x, y; };
    /// typedef const struct inner inner_t;
    /// struct demo {                         // kind_flag set
    ///     unsigned int a;                   // 0
    ///     union {                           // 4
    ///         unsigned int whole;
    ///         struct { unsigned short lo, hi; };
    ///     };
    ///     u8 flags:3, mode:5;               // byte 8, bits 0-2 and 3-7
    ///     inner_t in;                       // 12
    ///     u8 name[6];                       // 20
    ///     void *ptr;                        // 32
    /// };
    /// struct legacy { unsigned int lo3:3, :2, hi:4; };   // kind_flag clear
    /// /* assorted kinds the parser must skip */
    /// struct after { volatile inner_t v; }; // through volatile, typedef, const
    /// ```
    fn sample(big_endian: bool) -> Vec<u8> {
        let mut b = Blob::new(big_endian);
        let uint = b.int("unsigned int", 4, 0, 32);
        let uchar = b.int("unsigned char", 1, 0, 8);
        let ushort = b.int("unsigned short", 2, 0, 16);
        let u8_t = b.ty("u8", kind::TYPEDEF, false, 0, uchar, &[]);
        b.ty("demo", kind::FWD, false, 0, 0, &[]);
        b.composite("demo", kind::STRUCT, false, 0, &[]);
        let halves = b.composite(
            "",
            kind::STRUCT,
            false,
            4,
            &[("lo", ushort, 0), ("hi", ushort, 16)],
        );
        let anon_union = b.composite(
            "",
            kind::UNION,
            false,
            4,
            &[("whole", uint, 0), ("", halves, 0)],
        );
        let inner = b.composite(
            "inner",
            kind::STRUCT,
            false,
            8,
            &[("x", uint, 0), ("y", uint, 32)],
        );
        let const_inner = b.ty("", kind::CONST, false, 0, inner, &[]);
        let inner_t = b.ty("inner_t", kind::TYPEDEF, false, 0, const_inner, &[]);
        let name_array = b.ty("", kind::ARRAY, false, 0, 0, &[u8_t, uint, 6]);
        let void_ptr = b.ty("", kind::PTR, false, 0, 0, &[]);
        b.composite(
            "demo",
            kind::STRUCT,
            true,
            40,
            &[
                ("a", uint, 0),
                ("", anon_union, 32),
                ("flags", u8_t, bitfield(64, 3)),
                ("mode", u8_t, bitfield(67, 5)),
                ("in", inner_t, 96),
                ("name", name_array, 160),
                ("ptr", void_ptr, 256),
            ],
        );
        let bits3 = b.int("unsigned int", 4, 0, 3);
        let bits4_at2 = b.int("unsigned int", 4, 2, 4);
        b.composite(
            "legacy",
            kind::STRUCT,
            false,
            4,
            &[("lo3", bits3, 0), ("hi", bits4_at2, 3)],
        );
        // Kinds with trailing data of every size, to check they are skipped.
        b.ty("color", kind::ENUM, false, 2, 4, &[0, 0, 0, 1]);
        b.ty("big", kind::ENUM64, false, 1, 8, &[0, 1, 2]);
        let proto = b.ty("", kind::FUNC_PROTO, false, 2, uint, &[0, uint, 0, uint]);
        b.ty("f", kind::FUNC, false, 0, proto, &[]);
        let var = b.ty("v", kind::VAR, false, 0, uint, &[1]);
        b.ty(".data", kind::DATASEC, false, 1, 4, &[var, 0, 4]);
        b.ty("tag", kind::DECL_TAG, false, 0, var, &[u32::MAX]);
        b.ty("user", kind::TYPE_TAG, false, 0, void_ptr, &[]);
        b.ty("float", kind::FLOAT, false, 0, 4, &[]);
        b.ty("r", kind::RESTRICT, false, 0, void_ptr, &[]);
        let volatile_inner = b.ty("", kind::VOLATILE, false, 0, inner_t, &[]);
        b.composite("after", kind::STRUCT, false, 8, &[("v", volatile_inner, 0)]);
        b.build()
    }

    #[test]
    fn btf_hand_built_blob() {
        for big_endian in [false, true] {
            let btf = KernelBtf::from_bytes(&sample(big_endian)).unwrap();
            let off = |s, p| btf.offset_of(s, p).unwrap();
            assert_eq!(off("demo", "a"), 0);
            // Through the anonymous union, then the anonymous struct in it.
            assert_eq!(off("demo", "whole"), 4);
            assert_eq!(off("demo", "lo"), 4);
            assert_eq!(off("demo", "hi"), 6);
            // Through typedef + const to the nested struct.
            assert_eq!(off("demo", "in"), 12);
            assert_eq!(off("demo", "in.y"), 16);
            assert_eq!(off("demo", "name"), 20);
            assert_eq!(off("inner", "y"), 4);
            assert_eq!(off("inner_t", "y"), 4);
            // Skipping every kind's trailing data kept the ids right.
            assert_eq!(off("after", "v.y"), 4);

            let field = |s, p| btf.field(s, p).unwrap();
            let f = |bit_offset, bit_size, byte_size| Field {
                bit_offset,
                bit_size,
                byte_size,
            };
            assert_eq!(field("demo", "flags"), f(64, 3, 1));
            assert_eq!(field("demo", "mode"), f(67, 5, 1));
            assert!(field("demo", "mode").is_bitfield());
            assert_eq!(field("demo", "hi"), f(48, 0, 2));
            assert_eq!(field("demo", "in"), f(96, 0, 8));
            assert_eq!(field("demo", "name"), f(160, 0, 6));
            assert_eq!(field("demo", "ptr").byte_size, size_of::<usize>() as u32);
            assert_eq!(field("after", "v"), f(0, 0, 8));
            // Legacy (kind_flag clear) bitfields are encoded in the INT.
            assert_eq!(field("legacy", "lo3"), f(0, 3, 4));
            assert_eq!(field("legacy", "hi"), f(5, 4, 4));

            for name in [
                "demo", "inner_t", "u8", "color", "big", "f", "v", ".data", "tag",
            ] {
                assert!(btf.has_type(name), "{name}");
            }
            assert!(!btf.has_type("nope"));
            assert!(!btf.has_type(""));

            // offset_of refuses bitfields rather than truncate them.
            assert!(matches!(
                btf.offset_of("demo", "flags"),
                Err(BtfError::Bitfield {
                    bit_offset: 64,
                    bit_size: 3,
                    ..
                })
            ));
            assert!(matches!(
                btf.offset_of("demo", "a.b"),
                Err(BtfError::NotComposite { member, .. }) if member == "a"
            ));
            assert!(matches!(
                btf.offset_of("demo", "in..y"),
                Err(BtfError::BadPath { .. })
            ));
            assert!(matches!(
                btf.offset_of("demo", ""),
                Err(BtfError::BadPath { .. })
            ));
            // A name that is not a struct (an enum) is not looked into.
            assert!(matches!(
                btf.offset_of("color", "r"),
                Err(BtfError::NoStruct { .. })
            ));
        }
    }

    #[test]
    fn btf_missing_names_are_reported() {
        let btf = KernelBtf::from_bytes(&sample(false)).unwrap();
        let err = btf.offset_of("demo", "in.z").unwrap_err();
        assert!(
            matches!(&err, BtfError::NoField { strukt, path, missing }
                if strukt == "demo" && path == "in.z" && missing == "z"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("`demo`") && msg.contains("`in.z`"), "{msg}");

        let err = btf.field("nope", "x").unwrap_err();
        assert!(matches!(err, BtfError::NoStruct { .. }), "{err:?}");
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn btf_rejects_malformed_data() {
        let blob = sample(false);
        let err = |data: &[u8]| KernelBtf::from_bytes(data).err().unwrap();
        assert!(matches!(err(&blob[..10]), BtfError::Malformed(_)));
        assert!(matches!(
            err(&blob[..blob.len() - 1]),
            BtfError::Malformed(_)
        ));
        let mut bad = blob.clone();
        bad[0] = 0;
        assert!(matches!(err(&bad), BtfError::BadMagic(_)));
        let mut bad = blob.clone();
        bad[2] = 2;
        assert!(matches!(err(&bad), BtfError::UnsupportedVersion(2)));
        // An unknown kind cannot be skipped.
        let mut bad = blob.clone();
        bad[HEADER_LEN + 7] = 30;
        assert!(matches!(
            err(&bad),
            BtfError::UnknownKind { id: 1, kind: 30 }
        ));
        // Type section length cutting a record short.
        let mut bad = blob;
        let type_len = u32::from_le_bytes(bad[12..16].try_into().unwrap());
        bad[12..16].copy_from_slice(&(type_len - 4).to_le_bytes());
        assert!(matches!(err(&bad), BtfError::Malformed(_)));
    }

    fn kernel() -> Option<KernelBtf> {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipping: {VMLINUX_BTF} not present");
            return None;
        }
        let start = Instant::now();
        let btf = KernelBtf::load().unwrap();
        eprintln!(
            "loaded {VMLINUX_BTF}: {} types in {:?}",
            btf.types.len() - 1,
            start.elapsed()
        );
        Some(btf)
    }

    /// Offsets that have not moved in years (x86-64 and other 64-bit).
    #[test]
    fn btf_kernel_stable_offsets() {
        let Some(btf) = kernel() else { return };
        let off = |s, p| btf.offset_of(s, p).unwrap();
        // In anonymous unions/structs at the start of sock_common.
        assert_eq!(off("sock_common", "skc_daddr"), 0);
        assert_eq!(off("sock_common", "skc_rcv_saddr"), 4);
        assert_eq!(off("sock_common", "skc_dport"), 12);
        assert_eq!(off("sock_common", "skc_num"), 14);
        assert_eq!(off("sock_common", "skc_family"), 16);
        // `typedef struct { struct net *net; } possible_net_t;`
        assert_eq!(off("possible_net_t", "net"), 0);
        // In an anonymous union/struct after seq and end_seq.
        assert_eq!(off("tcp_skb_cb", "tcp_gso_segs"), 8);
        assert_eq!(
            btf.field("tcp_skb_cb", "tcp_gso_segs").unwrap().byte_size,
            2
        );
        if cfg!(target_pointer_width = "64") {
            assert_eq!(off("sock_common", "skc_net"), 48);
            assert_eq!(off("sock_common", "skc_net.net"), 48);
            assert_eq!(off("sock_common", "skc_v6_daddr"), 56);
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(off("sk_buff", "cb"), 40);
            assert_eq!(btf.field("sk_buff", "cb").unwrap().byte_size, 48);
        }
        let ca_state = btf.field("inet_connection_sock", "icsk_ca_state").unwrap();
        assert_eq!(ca_state.bit_size, 5);
        assert_eq!(ca_state.byte_size, 1);
        assert!(btf.has_type("sk_buff"));
        assert!(!btf.has_type("hostscope_no_such_type"));

        let err = btf.offset_of("sock_common", "skc_nonexistent").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sock_common") && msg.contains("skc_nonexistent"),
            "{msg}"
        );
    }

    /// `bits_offset` and `bitfield_size` of a direct member of a named struct
    /// in `bpftool btf dump ... format raw` output.
    fn bpftool_member(dump: &str, strukt: &str, member: &str) -> (u32, u32) {
        let header = format!("STRUCT '{strukt}' size=");
        let mut lines = dump.lines().skip_while(|l| !l.contains(&header));
        assert!(lines.next().is_some(), "bpftool: no {header}");
        let want = format!("'{member}' ");
        let line = lines
            .take_while(|l| l.starts_with('\t'))
            .find(|l| l.trim_start().starts_with(&want))
            .unwrap_or_else(|| panic!("bpftool: no {strukt}.{member}"));
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map_or(0, |v| v.parse().unwrap())
        };
        (value("bits_offset="), value("bitfield_size="))
    }

    /// Kernel-specific offsets, checked against bpftool's (libbpf's) reading
    /// of the same BTF.
    #[test]
    fn btf_kernel_matches_bpftool() {
        let Some(btf) = kernel() else { return };
        let dump = match Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        {
            Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
            other => {
                eprintln!("skipping: bpftool unavailable ({other:?})");
                return;
            }
        };
        let bytes = |s, m| {
            let (bits, bitfield_size) = bpftool_member(&dump, s, m);
            assert_eq!(bitfield_size, 0, "{s}.{m}");
            assert_eq!(bits % 8, 0, "{s}.{m}");
            bits / 8
        };
        let off = |s, p| btf.offset_of(s, p).unwrap();

        assert_eq!(off("sk_buff", "cb"), bytes("sk_buff", "cb"));
        assert_eq!(
            off("sock_common", "skc_family"),
            bytes("sock_common", "skc_family")
        );
        assert_eq!(
            off("sock_common", "skc_net"),
            bytes("sock_common", "skc_net")
        );
        assert_eq!(
            off("sock_common", "skc_net.net"),
            bytes("sock_common", "skc_net")
        );
        assert_eq!(
            off("sock_common", "skc_v6_daddr"),
            bytes("sock_common", "skc_v6_daddr")
        );
        assert_eq!(
            off("sock_common", "skc_v6_rcv_saddr"),
            bytes("sock_common", "skc_v6_rcv_saddr")
        );
        assert_eq!(
            off("inet_connection_sock", "icsk_pending"),
            bytes("inet_connection_sock", "icsk_pending")
        );
        assert_eq!(off("net", "ns"), bytes("net", "ns"));
        assert_eq!(off("ns_common", "inum"), bytes("ns_common", "inum"));
        assert_eq!(
            off("net", "ns.inum"),
            bytes("net", "ns") + bytes("ns_common", "inum")
        );

        let (bits, bitfield_size) = bpftool_member(&dump, "inet_connection_sock", "icsk_ca_state");
        assert_eq!(bitfield_size, 5);
        let ca_state = btf.field("inet_connection_sock", "icsk_ca_state").unwrap();
        assert_eq!(
            ca_state,
            Field {
                bit_offset: bits,
                bit_size: 5,
                byte_size: 1
            }
        );

        for name in [
            "btf_trace_tcp_sendmsg_locked",
            "btf_trace_tcp_retransmit_skb",
        ] {
            let in_dump = dump.contains(&format!("TYPEDEF '{name}' "));
            assert_eq!(btf.has_type(name), in_dump, "{name}");
        }
    }

    #[test]
    fn btf_tracepoint_arguments_on_this_kernel() {
        let Ok(btf) = KernelBtf::load() else {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        };
        // sched_switch(bool preempt, prev, next, unsigned int prev_state).
        assert_eq!(
            btf.tracepoint_args("sched_switch"),
            Some(vec![false, true, true, false])
        );
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
    }
}
