#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| testmesh::fuzzing::api_submit(data));
