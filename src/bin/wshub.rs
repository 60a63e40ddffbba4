//! `wshub`: integrated mode, on `app.port`.

#[global_allocator]
static ALLOCATOR: wshub::alloc::Counting = wshub::alloc::Counting;

fn main() -> std::process::ExitCode {
    wshub::internals::main(wshub::Mode::Integrated)
}
