#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| testmesh::fuzzing::gossip_stats(data));
