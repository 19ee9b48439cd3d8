//! criterion benches of dskd's own per-frame kernels (not the graphs: `dskd bench` times those
//! beside onnxruntime). Throughput is in output pixels per second at the demo's 256² input.
//!
//!   cargo bench --bench kernels

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use dskd::detector::anomaly_map::{self, FeatureMap, Map, MapSettings};
use dskd::detector::verdict;
use dskd::preprocess::{self, InputSpec};
use dskd::synth::Rng;

const SIZE: usize = 256;

/// MobileNetV2's three levels at 256²: 24x64x64, 32x32x32, 96x16x16.
fn levels(seed: u64) -> Vec<FeatureMap> {
    let mut rng = Rng::new(seed);
    [(24, 64), (32, 32), (96, 16)]
        .into_iter()
        .map(|(c, s)| FeatureMap {
            data: (0..c * s * s).map(|_| rng.unit() - 0.5).collect(),
            channels: c,
            height: s,
            width: s,
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let (teacher, se, sd) = (levels(1), levels(2), levels(3));
    let pixels = (SIZE * SIZE) as u64;
    let mut g = c.benchmark_group("map");
    g.throughput(Throughput::Elements(pixels));
    g.bench_function("cosine_distance_3_levels", |b| {
        b.iter(|| {
            for (t, s) in teacher.iter().zip(&se) {
                black_box(anomaly_map::cosine_distance(t, s));
            }
        })
    });
    let level0 = anomaly_map::cosine_distance(&teacher[0], &se[0]);
    g.bench_function("upsample_64_to_256", |b| {
        b.iter(|| black_box(anomaly_map::upsample_bilinear(&level0, SIZE, SIZE)))
    });
    let mut rng = Rng::new(4);
    let full = Map { data: (0..SIZE * SIZE).map(|_| rng.unit()).collect(), height: SIZE, width: SIZE };
    g.bench_function("gaussian_blur_sigma4", |b| b.iter(|| black_box(anomaly_map::gaussian_blur(&full, 4.0))));
    let settings = MapSettings::default();
    g.bench_function("anomaly_map_dskd", |b| {
        b.iter(|| black_box(anomaly_map::anomaly_map(&teacher, &[&se, &sd], &settings, SIZE, SIZE)))
    });
    let spots = {
        let mut m = Map { data: vec![0.0; SIZE * SIZE], height: SIZE, width: SIZE };
        for (cx, cy) in [(40, 40), (128, 200), (220, 90)] {
            for y in cy - 10..cy + 10 {
                for x in cx - 12..cx + 12 {
                    m.data[y * SIZE + x] = 1.0;
                }
            }
        }
        m
    };
    g.bench_function("regions_3_blobs", |b| b.iter(|| black_box(verdict::regions(&spots, 0.5, 0.9, 640, 480))));
    g.finish();

    let mut g = c.benchmark_group("preprocess");
    let frame = image::DynamicImage::ImageLuma8(dskd::synth::normal(1, 0, 512));
    let spec = InputSpec::imagenet(SIZE as u32);
    g.throughput(Throughput::Elements(pixels));
    g.bench_function("resize_512_to_256_normalise", |b| b.iter(|| black_box(preprocess::to_tensor(&frame, &spec))));
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
