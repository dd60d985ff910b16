//! A valid WASI command component that exports no Tollgate interface: the
//! host must refuse it as "not a Tollgate plugin".
fn main() {
    println!("hello from a program that is not a plugin");
}
