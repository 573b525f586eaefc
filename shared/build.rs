// The migrations are embedded at compile time (refinery's `embed_migrations!`);
// rebuild whenever a file is added to or changed in either folder.
fn main() {
    println!("cargo:rerun-if-changed=../migrations_tenant");
    println!("cargo:rerun-if-changed=../migrations_system");
}
