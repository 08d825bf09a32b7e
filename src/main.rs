/// jemalloc returns freed memory to the system (its background threads purge pages unused for ten
/// seconds). With glibc's malloc a node kept 150–200 MB it had freed after installing or loading a
/// snapshot at a million leases, which put it over its 1 GiB budget (benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    warrant::cli::main()
}
