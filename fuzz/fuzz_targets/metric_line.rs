#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| testmesh::fuzzing::metric_line(data));
