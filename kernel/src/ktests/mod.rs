//! The in-kernel tests, one file per subsystem. Each `ktest!` registers itself in the `.ktest`
//! linker section under its module path, `kernel::ktests::<subsystem>::<what_it_checks>`;
//! `ktest=FILTER` on the command line runs those whose name contains a comma-separated part.
mod irq;
mod kernel;
pub mod page_alloc;
mod percpu;
mod rcu;
mod smp;
mod vmalloc;
