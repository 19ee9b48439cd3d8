//! What the test machine's CPU can do, where a test's expectation depends on it.

/// Whether onnxruntime's int8 kernels can be held to tract's int8 maps on this CPU. On x86
/// without VNNI (AVX2 only: measured on an AMD EPYC) its int8 maps differ from the golden ones
/// by ~0.27 of their peak where the bound is 0.12-0.15 (the likely cause: its u8 x s8 kernels
/// sum pairs of products in 16 bits there, VPMADDUBSW, which saturates), and `dskd verify` and
/// the daemon refuse the bundle's int8 graphs on that engine. On the AVX-512-VNNI machine the
/// products are summed in 32 bits and the bound held.
pub fn onnxruntime_int8_is_exact() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}
