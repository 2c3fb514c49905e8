//! Human-readable listing of an IGVM file: every header, one line each, in file order.

use igvm::IgvmDirectiveHeader;
use igvm::IgvmFile;
use igvm::IgvmInitializationHeader;
use igvm::IgvmPlatformHeader;
use std::fmt::Write;

/// Lists every platform, initialization and directive header of `file`, one per line, in
/// file order. Page data is shown by length and a short SHA-256, not in full.
pub fn dump(file: &IgvmFile) -> String {
    let mut out = String::new();
    for p in file.platforms() {
        match p {
            IgvmPlatformHeader::SupportedPlatform(info) => {
                let _ = writeln!(
                    out,
                    "platform mask={:#x} type={:?} version={} highest_vtl={} shared_gpa_boundary={:#x}",
                    info.compatibility_mask,
                    info.platform_type,
                    info.platform_version,
                    info.highest_vtl,
                    info.shared_gpa_boundary
                );
            }
        }
    }
    for h in file.initializations() {
        let _ = match h {
            IgvmInitializationHeader::GuestPolicy {
                policy,
                compatibility_mask,
            } => writeln!(
                out,
                "init guest_policy mask={compatibility_mask:#x} policy={policy:#x}"
            ),
            IgvmInitializationHeader::RelocatableRegion {
                compatibility_mask,
                relocation_alignment,
                relocation_region_gpa,
                relocation_region_size,
                minimum_relocation_gpa,
                maximum_relocation_gpa,
                apply_rip_offset,
                apply_gdtr_offset,
                vp_index,
                vtl,
                ..
            } => writeln!(
                out,
                "init relocatable_region mask={compatibility_mask:#x} gpa={relocation_region_gpa:#x} size={relocation_region_size:#x} align={relocation_alignment:#x} min={minimum_relocation_gpa:#x} max={maximum_relocation_gpa:#x} rip={apply_rip_offset} gdtr={apply_gdtr_offset} vp={vp_index} vtl={vtl:?}"
            ),
            IgvmInitializationHeader::PageTableRelocationRegion {
                compatibility_mask,
                gpa,
                size,
                used_size,
                vp_index,
                vtl,
            } => writeln!(
                out,
                "init page_table_relocation mask={compatibility_mask:#x} gpa={gpa:#x} size={size:#x} used={used_size:#x} vp={vp_index} vtl={vtl:?}"
            ),
            other => writeln!(out, "init {other:?}"),
        };
    }
    for d in file.directives() {
        let _ = match d {
            IgvmDirectiveHeader::PageData {
                gpa,
                compatibility_mask,
                flags,
                data_type,
                data,
            } => writeln!(
                out,
                "page_data gpa={gpa:#x} mask={compatibility_mask:#x} 2mb={} unmeasured={} shared={} type={data_type:?} data_len={} data_sha256={}",
                flags.is_2mb_page(),
                flags.unmeasured(),
                flags.shared(),
                data.len(),
                short_hash(data)
            ),
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                initial_data,
            } => writeln!(
                out,
                "parameter_area index={parameter_area_index} bytes={number_of_bytes:#x} initial_data_len={}",
                initial_data.len()
            ),
            IgvmDirectiveHeader::VpCount(p) => param(&mut out, "vp_count", p),
            IgvmDirectiveHeader::EnvironmentInfo(p) => param(&mut out, "environment_info", p),
            IgvmDirectiveHeader::Srat(p) => param(&mut out, "srat", p),
            IgvmDirectiveHeader::Madt(p) => param(&mut out, "madt", p),
            IgvmDirectiveHeader::Slit(p) => param(&mut out, "slit", p),
            IgvmDirectiveHeader::Pptt(p) => param(&mut out, "pptt", p),
            IgvmDirectiveHeader::MmioRanges(p) => param(&mut out, "mmio_ranges", p),
            IgvmDirectiveHeader::MemoryMap(p) => param(&mut out, "memory_map", p),
            IgvmDirectiveHeader::CommandLine(p) => param(&mut out, "command_line", p),
            IgvmDirectiveHeader::DeviceTree(p) => param(&mut out, "device_tree", p),
            IgvmDirectiveHeader::ParameterInsert(p) => writeln!(
                out,
                "parameter_insert gpa={:#x} mask={:#x} index={}",
                p.gpa, p.compatibility_mask, p.parameter_area_index
            ),
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                compatibility_mask,
                number_of_bytes,
                vtl2_protectable,
            } => writeln!(
                out,
                "required_memory gpa={gpa:#x} mask={compatibility_mask:#x} bytes={number_of_bytes:#x} vtl2_protectable={vtl2_protectable}"
            ),
            IgvmDirectiveHeader::SnpVpContext {
                gpa,
                compatibility_mask,
                vp_index,
                vmsa,
            } => writeln!(
                out,
                "snp_vp_context gpa={gpa:#x} mask={compatibility_mask:#x} vp={vp_index} rip={:#x} cr0={:#x} cr3={:#x} sev_features={:#x} vmsa_sha256={}",
                vmsa.rip,
                vmsa.cr0,
                vmsa.cr3,
                u64::from(vmsa.sev_features),
                short_hash(zerocopy::IntoBytes::as_bytes(vmsa.as_ref()))
            ),
            IgvmDirectiveHeader::X64VbsVpContext {
                vtl,
                registers,
                compatibility_mask,
            } => writeln!(
                out,
                "x64_vbs_vp_context mask={compatibility_mask:#x} vtl={vtl:?} registers={registers:?}"
            ),
            IgvmDirectiveHeader::AArch64VbsVpContext {
                vtl,
                registers,
                compatibility_mask,
            } => writeln!(
                out,
                "aarch64_vbs_vp_context mask={compatibility_mask:#x} vtl={vtl:?} registers={registers:?}"
            ),
            IgvmDirectiveHeader::X64NativeVpContext {
                compatibility_mask,
                vp_index,
                context,
            } => writeln!(
                out,
                "x64_native_vp_context mask={compatibility_mask:#x} vp={vp_index} rip={:#x} rsp={:#x} cr3={:#x}",
                context.rip, context.rsp, context.cr3
            ),
            IgvmDirectiveHeader::ErrorRange {
                gpa,
                compatibility_mask,
                size_bytes,
            } => writeln!(
                out,
                "error_range gpa={gpa:#x} mask={compatibility_mask:#x} bytes={size_bytes:#x}"
            ),
            IgvmDirectiveHeader::SnpIdBlock {
                compatibility_mask,
                ld,
                guest_svn,
                version,
                ..
            } => writeln!(
                out,
                "snp_id_block mask={compatibility_mask:#x} ld={} guest_svn={guest_svn} version={version}",
                hex::encode(ld)
            ),
            other => writeln!(out, "directive {other:?}"),
        };
    }
    out
}

fn param(out: &mut String, name: &str, p: &igvm_defs::IGVM_VHS_PARAMETER) -> std::fmt::Result {
    writeln!(
        out,
        "{name} index={} offset={:#x}",
        p.parameter_area_index, p.byte_offset
    )
}

fn short_hash(data: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(data);
    hex::encode(h.get(..8).unwrap_or_default())
}
