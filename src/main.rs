//! berthd: the CRI server.

fn main() {
    println!("berthd {}", berth::VERSION);
}
