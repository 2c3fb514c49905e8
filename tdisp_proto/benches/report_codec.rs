//! Decode + encode of a 15-range DEVICE_INTERFACE_REPORT, against a plain copy of the same
//! bytes as the reference point measured in the same run.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "benchmark inputs are built to be valid")]

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::report::InterfaceInfo;
use tdisp_proto::pcie::report::MmioRangeAttributes;

fn report_15_ranges() -> DeviceInterfaceReport {
    DeviceInterfaceReport {
        interface_info: InterfaceInfo::new()
            .with_no_fw_update(true)
            .with_dma_without_pasid(true),
        msi_x_message_control: 0x8007,
        lnr_control: 0,
        tph_control: 0,
        mmio_ranges: (0..15u16)
            .map(|i| MmioRange {
                first_page: 0xfe00_0000 + u64::from(i) * 0x10_0000,
                number_of_pages: 16,
                attributes: MmioRangeAttributes::from_bits(i & 0xf),
                range_id: i % 6,
            })
            .collect(),
        device_specific_info: vec![0xa5; 32],
    }
}

fn bench(c: &mut Criterion) {
    let wire = report_15_ranges().to_bytes();
    let mut group = c.benchmark_group("report_15_ranges");
    group.bench_function("copy_bytes_reference", |b| {
        b.iter(|| black_box(black_box(&wire).to_vec()));
    });
    group.bench_function("decode", |b| {
        b.iter(|| DeviceInterfaceReport::decode(black_box(&wire)).unwrap());
    });
    group.bench_function("decode_encode", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            let report = DeviceInterfaceReport::decode(black_box(&wire)).unwrap();
            out.clear();
            report.encode(&mut out);
            black_box(&out);
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
