//! Memory management: the kernel's single instance of each pure mm crate, with the memory and
//! the locks it runs on, plus what only exists in the kernel (vmalloc, kmalloc, boot setup).
//!
//! One naming rule: `mm/<x>.rs` instantiates crate `mm_<x>` (crates/<x>/).
//!
//! | module | instantiates | Linux |
//! |---|---|---|
//! | [`page_alloc`] | `mm_page_alloc::PageAllocator` over the linear map | mm/page_alloc.c's globals |
//! | [`pgtable`] | `mm_pgtable::PageTable` on TTBR1, table pages, `init_mm.page_table_lock` | swapper_pg_dir, paging_init |
//! | [`kva`] | `mm_kva` trees and pools, one per vmap node, each under its lock | mm/vmalloc.c's vmap nodes |
//! | [`percpu`] | `mm_percpu::PcpuPool` backed by vmalloc space | mm/percpu.c, percpu-vm.c |
//! | [`vmalloc`] | (kernel only) vm_struct areas: vmalloc/vfree, vrealloc, vmap | mm/vmalloc.c |
//! | `vmap_area` | (kernel only) the vmap areas below: VA, map/unmap, lazy free and purge | mm/vmalloc.c |
//! | `vmap_block` | (kernel only) vm_map_ram's per-CPU vmap blocks, vm_unmap_aliases | mm/vmalloc.c |
//! | [`kmalloc`] | (kernel only) the small-object heap | mm/slub.c's role |
//! | [`init`] | (kernel only) boot-time setup in order | mm_core_init, bootmem_init |
//!
//! Dependencies run one way: init -> percpu -> vmalloc -> {vmap_block -> vmap_area} -> {kva,
//! pgtable} -> page_alloc.
pub mod init;
pub mod kmalloc;
pub mod kva;
pub mod page_alloc;
pub mod percpu;
pub mod pgtable;
pub mod vmalloc;
mod vmap_area;
mod vmap_block;
