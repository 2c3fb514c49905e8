//! The report structures of OpenVMM's `tdisp.proto` as first merged (microsoft/openvmm
//! fa27c138d): a protobuf view of a DEVICE_INTERFACE_REPORT.
//!
//! Upstream removed them later (5c7a9061a) because the report travels as the raw TDISP bytes
//! in `TdispCommandResponseGetTdiReport.report_buffer`, which is also what this crate sends;
//! no top-level message refers to them. They are kept so that a peer or a tool holding such a
//! message can read it, and [`TdiReportStruct::from`] gives the view of a decoded report.
//! Field numbers are the schema's. Note the schema's naming: `firmware_update_allowed` is
//! documented as "true when firmware updates are *not* permitted" and so carries the report's
//! NO_FW_UPDATE bit.

use crate::pcie::report::DeviceInterfaceReport;
use crate::pcie::report::MmioRange;

/// `tdisp.TdispTdiReportInterfaceInfo`: the report's interface_info bits.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispTdiReportInterfaceInfo {
    /// Field 1: the NO_FW_UPDATE bit (see the module docs for the name).
    #[prost(bool, tag = "1")]
    pub firmware_update_allowed: bool,
    /// Field 2: DMA requests without PASID.
    #[prost(bool, tag = "2")]
    pub generate_dma_without_pasid: bool,
    /// Field 3: DMA requests with PASID.
    #[prost(bool, tag = "3")]
    pub generate_dma_with_pasid: bool,
    /// Field 4: ATS supported and enabled.
    #[prost(bool, tag = "4")]
    pub ats_support_enabled: bool,
    /// Field 5: PRS supported and enabled.
    #[prost(bool, tag = "5")]
    pub prs_support_enabled: bool,
}

/// `tdisp.TdispTdiReportMmioFlags`: an MMIO range's attribute bits.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispTdiReportMmioFlags {
    /// Field 1: the range maps the MSI-X table.
    #[prost(bool, tag = "1")]
    pub range_maps_msix_table: bool,
    /// Field 2: the range maps the MSI-X PBA.
    #[prost(bool, tag = "2")]
    pub range_maps_msix_pba: bool,
    /// Field 3: non-TEE memory.
    #[prost(bool, tag = "3")]
    pub is_non_tee_mem: bool,
    /// Field 4: attributes updatable with SET_MMIO_ATTRIBUTE.
    #[prost(bool, tag = "4")]
    pub is_mem_attr_updatable: bool,
}

/// `tdisp.TdispTdiReportMmioInterfaceInfo`: one MMIO range.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TdispTdiReportMmioInterfaceInfo {
    /// Field 1: first 4 KiB page, reporting offset added.
    #[prost(uint64, tag = "1")]
    pub first_4k_page_offset: u64,
    /// Field 2: number of 4 KiB pages.
    #[prost(uint32, tag = "2")]
    pub num_4k_pages: u32,
    /// Field 3: attributes.
    #[prost(message, optional, tag = "3")]
    pub flags: Option<TdispTdiReportMmioFlags>,
    /// Field 4: range id (16 bits carried in a uint32).
    #[prost(uint32, tag = "4")]
    pub range_id: u32,
}

/// `tdisp.TdiReportStruct`: a decoded interface report (without its device-specific bytes).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TdiReportStruct {
    /// Field 1: interface info bits.
    #[prost(message, optional, tag = "1")]
    pub interface_info: Option<TdispTdiReportInterfaceInfo>,
    /// Field 2: MSI-X message control (16 bits in a uint32).
    #[prost(uint32, tag = "2")]
    pub msi_x_message_control: u32,
    /// Field 3: LNR control (16 bits in a uint32).
    #[prost(uint32, tag = "3")]
    pub lnr_control: u32,
    /// Field 4: TPH control.
    #[prost(uint32, tag = "4")]
    pub tph_control: u32,
    /// Field 5: the MMIO ranges.
    #[prost(message, repeated, tag = "5")]
    pub mmio_interface_info: Vec<TdispTdiReportMmioInterfaceInfo>,
}

impl From<&MmioRange> for TdispTdiReportMmioInterfaceInfo {
    fn from(range: &MmioRange) -> Self {
        Self {
            first_4k_page_offset: range.first_page,
            num_4k_pages: range.number_of_pages,
            flags: Some(TdispTdiReportMmioFlags {
                range_maps_msix_table: range.attributes.msix_table(),
                range_maps_msix_pba: range.attributes.msix_pba(),
                is_non_tee_mem: range.attributes.non_tee_memory(),
                is_mem_attr_updatable: range.attributes.attributes_updatable(),
            }),
            range_id: range.range_id.into(),
        }
    }
}

impl From<&DeviceInterfaceReport> for TdiReportStruct {
    /// The schema's view of `report`. The XT-mode bit and the device-specific information
    /// have no field in it and are left out.
    fn from(report: &DeviceInterfaceReport) -> Self {
        let info = report.interface_info;
        Self {
            interface_info: Some(TdispTdiReportInterfaceInfo {
                firmware_update_allowed: info.no_fw_update(),
                generate_dma_without_pasid: info.dma_without_pasid(),
                generate_dma_with_pasid: info.dma_with_pasid(),
                ats_support_enabled: info.ats(),
                prs_support_enabled: info.prs(),
            }),
            msi_x_message_control: report.msi_x_message_control.into(),
            lnr_control: report.lnr_control.into(),
            tph_control: report.tph_control,
            mmio_interface_info: report.mmio_ranges.iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcie::report::InterfaceInfo;
    use crate::pcie::report::MmioRangeAttributes;
    use prost::Message;

    #[test]
    fn report_view_carries_every_schema_field() {
        let report = DeviceInterfaceReport {
            interface_info: InterfaceInfo::new()
                .with_no_fw_update(true)
                .with_dma_with_pasid(true),
            msi_x_message_control: 0x8003,
            lnr_control: 2,
            tph_control: 0x100,
            mmio_ranges: vec![MmioRange {
                first_page: 0x1_0000_0000,
                number_of_pages: 4,
                attributes: MmioRangeAttributes::new().with_msix_table(true),
                range_id: 0xffff,
            }],
            device_specific_info: b"ignored".to_vec(),
        };
        let view = TdiReportStruct::from(&report);
        let info = view.interface_info.unwrap();
        assert!(info.firmware_update_allowed && info.generate_dma_with_pasid);
        assert!(!info.generate_dma_without_pasid);
        assert_eq!(view.msi_x_message_control, 0x8003);
        let range = view.mmio_interface_info[0];
        assert_eq!(range.range_id, 0xffff);
        assert!(range.flags.unwrap().range_maps_msix_table);
        let bytes = view.encode_to_vec();
        assert_eq!(TdiReportStruct::decode(bytes.as_slice()).unwrap(), view);
    }
}
