//! A recording [`ImageLoad`] for testing loaders: every call is kept, in order, and
//! succeeds (parameter areas get consecutive indices).

use crate::arch::GuestArch;
use crate::error::Error;
use crate::error::Result;
use crate::importer::BootPageAcceptance;
use crate::importer::IgvmParameterType;
use crate::importer::ImageLoad;
use crate::importer::IsolationConfig;
use crate::importer::ParameterAreaIndex;
use crate::importer::StartupMemoryType;

/// One recorded [`ImageLoad`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportCall<R> {
    /// [`ImageLoad::create_parameter_area`] / [`ImageLoad::create_parameter_area_with_data`].
    CreateParameterArea {
        /// First page.
        page_base: u64,
        /// Pages.
        page_count: u32,
        /// Debug tag.
        debug_tag: String,
        /// Initial data (empty without).
        initial_data: Vec<u8>,
        /// Index handed out.
        index: ParameterAreaIndex,
    },
    /// [`ImageLoad::import_parameter`].
    ImportParameter {
        /// Area.
        area: ParameterAreaIndex,
        /// Offset in the area.
        byte_offset: u32,
        /// Parameter.
        parameter_type: IgvmParameterType,
    },
    /// [`ImageLoad::import_pages`].
    ImportPages {
        /// First page.
        page_base: u64,
        /// Pages.
        page_count: u64,
        /// Debug tag.
        debug_tag: String,
        /// Acceptance.
        acceptance: BootPageAcceptance,
        /// Data.
        data: Vec<u8>,
    },
    /// [`ImageLoad::import_vp_register`].
    ImportVpRegister(R),
    /// [`ImageLoad::verify_startup_memory_available`].
    VerifyStartupMemory {
        /// First page.
        page_base: u64,
        /// Pages.
        page_count: u64,
        /// Memory type.
        memory_type: StartupMemoryType,
    },
    /// [`ImageLoad::set_vp_context_page`].
    SetVpContextPage(u64),
    /// [`ImageLoad::relocation_region`].
    RelocationRegion {
        /// Region base.
        gpa: u64,
        /// Region size.
        size_bytes: u64,
        /// Alignment.
        relocation_alignment: u64,
        /// Lowest base.
        minimum_relocation_gpa: u64,
        /// Highest base.
        maximum_relocation_gpa: u64,
        /// Adjust RIP.
        apply_rip_offset: bool,
        /// Adjust GDTR.
        apply_gdtr_offset: bool,
        /// VP.
        vp_index: u16,
    },
    /// [`ImageLoad::page_table_relocation`].
    PageTableRelocation {
        /// Page table base.
        page_table_gpa: u64,
        /// Region pages.
        size_pages: u64,
        /// Used pages.
        used_pages: u64,
        /// VP.
        vp_index: u16,
    },
    /// [`ImageLoad::set_imported_regions_config_page`].
    SetImportedRegionsConfigPage(u64),
}

/// An [`ImageLoad`] that records calls instead of building anything.
#[derive(Debug, Clone)]
pub struct RecordingImporter<R> {
    config: IsolationConfig,
    calls: Vec<ImportCall<R>>,
    next_area: u32,
}

impl<R: GuestArch> RecordingImporter<R> {
    /// A recorder reporting `config` to loaders.
    pub fn new(config: IsolationConfig) -> Self {
        Self {
            config,
            calls: Vec::new(),
            next_area: 0,
        }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> &[ImportCall<R>] {
        &self.calls
    }

    /// Replays the recorded calls into another importer (for example a
    /// [`crate::builder::PlatformImage`]), stopping at the first error.
    pub fn replay(&self, target: &mut dyn ImageLoad<R>) -> Result<()> {
        for call in &self.calls {
            match call {
                ImportCall::CreateParameterArea {
                    page_base,
                    page_count,
                    debug_tag,
                    initial_data,
                    index,
                } => {
                    let got = target.create_parameter_area_with_data(
                        *page_base,
                        *page_count,
                        debug_tag,
                        initial_data,
                    )?;
                    if got != *index {
                        return Err(Error::UnknownParameterArea(*index));
                    }
                }
                ImportCall::ImportParameter {
                    area,
                    byte_offset,
                    parameter_type,
                } => target.import_parameter(*area, *byte_offset, *parameter_type)?,
                ImportCall::ImportPages {
                    page_base,
                    page_count,
                    debug_tag,
                    acceptance,
                    data,
                } => target.import_pages(*page_base, *page_count, debug_tag, *acceptance, data)?,
                ImportCall::ImportVpRegister(r) => target.import_vp_register(*r)?,
                ImportCall::VerifyStartupMemory {
                    page_base,
                    page_count,
                    memory_type,
                } => {
                    target.verify_startup_memory_available(
                        *page_base,
                        *page_count,
                        *memory_type,
                    )?;
                }
                ImportCall::SetVpContextPage(p) => target.set_vp_context_page(*p)?,
                ImportCall::RelocationRegion {
                    gpa,
                    size_bytes,
                    relocation_alignment,
                    minimum_relocation_gpa,
                    maximum_relocation_gpa,
                    apply_rip_offset,
                    apply_gdtr_offset,
                    vp_index,
                } => target.relocation_region(
                    *gpa,
                    *size_bytes,
                    *relocation_alignment,
                    *minimum_relocation_gpa,
                    *maximum_relocation_gpa,
                    *apply_rip_offset,
                    *apply_gdtr_offset,
                    *vp_index,
                )?,
                ImportCall::PageTableRelocation {
                    page_table_gpa,
                    size_pages,
                    used_pages,
                    vp_index,
                } => {
                    target.page_table_relocation(
                        *page_table_gpa,
                        *size_pages,
                        *used_pages,
                        *vp_index,
                    )?;
                }
                ImportCall::SetImportedRegionsConfigPage(p) => {
                    target.set_imported_regions_config_page(*p);
                }
            }
        }
        Ok(())
    }

    fn area(
        &mut self,
        page_base: u64,
        page_count: u32,
        tag: &str,
        data: &[u8],
    ) -> ParameterAreaIndex {
        let index = ParameterAreaIndex(self.next_area);
        self.next_area = self.next_area.wrapping_add(1);
        self.calls.push(ImportCall::CreateParameterArea {
            page_base,
            page_count,
            debug_tag: tag.to_string(),
            initial_data: data.to_vec(),
            index,
        });
        index
    }
}

impl<R: GuestArch> ImageLoad<R> for RecordingImporter<R> {
    fn isolation_config(&self) -> IsolationConfig {
        self.config
    }

    fn create_parameter_area(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
    ) -> Result<ParameterAreaIndex> {
        Ok(self.area(page_base, page_count, debug_tag, &[]))
    }

    fn create_parameter_area_with_data(
        &mut self,
        page_base: u64,
        page_count: u32,
        debug_tag: &str,
        initial_data: &[u8],
    ) -> Result<ParameterAreaIndex> {
        Ok(self.area(page_base, page_count, debug_tag, initial_data))
    }

    fn import_parameter(
        &mut self,
        parameter_area: ParameterAreaIndex,
        byte_offset: u32,
        parameter_type: IgvmParameterType,
    ) -> Result<()> {
        self.calls.push(ImportCall::ImportParameter {
            area: parameter_area,
            byte_offset,
            parameter_type,
        });
        Ok(())
    }

    fn import_pages(
        &mut self,
        page_base: u64,
        page_count: u64,
        debug_tag: &str,
        acceptance: BootPageAcceptance,
        data: &[u8],
    ) -> Result<()> {
        self.calls.push(ImportCall::ImportPages {
            page_base,
            page_count,
            debug_tag: debug_tag.to_string(),
            acceptance,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn import_vp_register(&mut self, register: R) -> Result<()> {
        self.calls.push(ImportCall::ImportVpRegister(register));
        Ok(())
    }

    fn verify_startup_memory_available(
        &mut self,
        page_base: u64,
        page_count: u64,
        memory_type: StartupMemoryType,
    ) -> Result<()> {
        self.calls.push(ImportCall::VerifyStartupMemory {
            page_base,
            page_count,
            memory_type,
        });
        Ok(())
    }

    fn set_vp_context_page(&mut self, page_base: u64) -> Result<()> {
        self.calls.push(ImportCall::SetVpContextPage(page_base));
        Ok(())
    }

    fn relocation_region(
        &mut self,
        gpa: u64,
        size_bytes: u64,
        relocation_alignment: u64,
        minimum_relocation_gpa: u64,
        maximum_relocation_gpa: u64,
        apply_rip_offset: bool,
        apply_gdtr_offset: bool,
        vp_index: u16,
    ) -> Result<()> {
        self.calls.push(ImportCall::RelocationRegion {
            gpa,
            size_bytes,
            relocation_alignment,
            minimum_relocation_gpa,
            maximum_relocation_gpa,
            apply_rip_offset,
            apply_gdtr_offset,
            vp_index,
        });
        Ok(())
    }

    fn page_table_relocation(
        &mut self,
        page_table_gpa: u64,
        size_pages: u64,
        used_pages: u64,
        vp_index: u16,
    ) -> Result<()> {
        self.calls.push(ImportCall::PageTableRelocation {
            page_table_gpa,
            size_pages,
            used_pages,
            vp_index,
        });
        Ok(())
    }

    fn set_imported_regions_config_page(&mut self, page_base: u64) {
        self.calls
            .push(ImportCall::SetImportedRegionsConfigPage(page_base));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::X86Register;
    use crate::builder::IgvmBuilder;
    use crate::builder::PlatformConfig;
    use crate::importer::IsolationType;

    fn load(image: &mut dyn ImageLoad<X86Register>) -> Result<()> {
        image.import_pages(1, 2, "code", BootPageAcceptance::Exclusive, b"abc")?;
        let area = image.create_parameter_area_with_data(8, 1, "p", b"init")?;
        image.import_parameter(area, 16, IgvmParameterType::DeviceTree)?;
        image.verify_startup_memory_available(0, 16, StartupMemoryType::Ram)?;
        image.set_vp_context_page(9)?;
        image.import_vp_register(X86Register::Rip(0x1000))?;
        image.set_imported_regions_config_page(10);
        Ok(())
    }

    #[test]
    fn records_every_call_in_order() {
        let mut rec =
            RecordingImporter::<X86Register>::new(IsolationConfig::new(IsolationType::Snp));
        load(&mut rec).unwrap();
        let calls = rec.calls();
        assert_eq!(calls.len(), 7);
        assert!(
            matches!(&calls[0], ImportCall::ImportPages { page_base: 1, data, .. } if data == b"abc")
        );
        assert!(matches!(
            &calls[1],
            ImportCall::CreateParameterArea { index: ParameterAreaIndex(0), initial_data, .. } if initial_data == b"init"
        ));
        assert_eq!(calls[4], ImportCall::SetVpContextPage(9));
        assert_eq!(calls[6], ImportCall::SetImportedRegionsConfigPage(10));
    }

    #[test]
    fn replay_builds_the_same_file_as_loading_directly() {
        let config = PlatformConfig::new(IsolationConfig::new(IsolationType::Snp));
        let mut rec = RecordingImporter::<X86Register>::new(config.isolation);
        load(&mut rec).unwrap();
        let mut direct = IgvmBuilder::<X86Register>::new();
        load(direct.add_platform(config).unwrap()).unwrap();
        let mut replayed = IgvmBuilder::<X86Register>::new();
        rec.replay(replayed.add_platform(config).unwrap()).unwrap();
        assert_eq!(
            direct.build_bytes().unwrap(),
            replayed.build_bytes().unwrap()
        );
    }

    #[test]
    fn replay_stops_at_the_first_contract_violation() {
        let mut rec =
            RecordingImporter::<X86Register>::new(IsolationConfig::new(IsolationType::Tdx));
        rec.import_pages(1, 1, "a", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        rec.import_pages(1, 1, "again", BootPageAcceptance::Exclusive, &[])
            .unwrap();
        let mut b = IgvmBuilder::<X86Register>::new();
        let image = b
            .add_platform(PlatformConfig::new(IsolationConfig::new(
                IsolationType::Tdx,
            )))
            .unwrap();
        assert!(matches!(rec.replay(image), Err(Error::Overlap { .. })));
    }
}
