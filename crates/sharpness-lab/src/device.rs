//! The compute device of every lab command (`--device`), chosen once per process.
//!
//! `cpu` is Flex, Burn's CPU backend (the default). With the `wgpu` cargo feature, `wgpu` runs
//! on a GPU through wgpu (Vulkan, Metal or DX12), `wgpu-cpu` on a software Vulkan device on the
//! CPU (Mesa's lavapipe: the GPU code path on any machine, slowly), and `auto` on a discrete
//! GPU when there is one, else on Flex. A device that is not there is an error naming what was
//! looked for, never a panic from inside the backend.

use std::sync::OnceLock;

use anyhow::{Result, bail};
use burn::prelude::*;
use clap::ValueEnum;

/// Which device to compute on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, strum::Display)]
#[strum(serialize_all = "kebab-case")]
pub enum DeviceChoice {
    /// Flex, Burn's CPU backend.
    #[default]
    Cpu,
    /// A GPU through wgpu (discrete first; needs the `wgpu` feature).
    Wgpu,
    /// A CPU Vulkan adapter through wgpu, e.g. Mesa's lavapipe (needs the `wgpu` feature).
    WgpuCpu,
    /// A discrete GPU through wgpu when there is one, else Flex.
    Auto,
}

/// The chosen device and how reports name it.
struct Chosen {
    device: Device,
    name: String,
}

static CHOSEN: OnceLock<Chosen> = OnceLock::new();

const LAVAPIPE: &str = "to run the GPU code path on a CPU, install Mesa's lavapipe \
                        (apt-get install -y mesa-vulkan-drivers libvulkan1) and pass \
                        --device wgpu-cpu";

/// Chooses the device for this process (once; a second, different choice is an error).
pub fn select(choice: DeviceChoice) -> Result<()> {
    let chosen = resolve(choice)?;
    let name = chosen.name.clone();
    if CHOSEN.set(chosen).is_err() && self::name() != name {
        bail!("the device is already {} (asked for {name})", self::name());
    }
    Ok(())
}

/// The device every lab computation runs on, with autodiff: the one [`select`]ed, else Flex.
pub fn device() -> Device {
    CHOSEN
        .get()
        .map_or_else(Device::flex, |c| c.device.clone())
        .autodiff()
}

/// The device's name in reports and results files, e.g. `cpu (Flex)`.
pub fn name() -> String {
    CHOSEN.get().map_or_else(|| flex().name, |c| c.name.clone())
}

fn flex() -> Chosen {
    Chosen {
        device: Device::flex(),
        name: "cpu (Flex)".into(),
    }
}

#[cfg(not(feature = "wgpu"))]
fn resolve(choice: DeviceChoice) -> Result<Chosen> {
    match choice {
        DeviceChoice::Cpu | DeviceChoice::Auto => Ok(flex()),
        DeviceChoice::Wgpu | DeviceChoice::WgpuCpu => bail!(
            "--device {choice} needs the `wgpu` feature: build with \
             `cargo build --release -p sharpness-lab --features wgpu`; {LAVAPIPE}"
        ),
    }
}

#[cfg(feature = "wgpu")]
fn resolve(choice: DeviceChoice) -> Result<Chosen> {
    use burn::tensor::DeviceKind;
    let gpu = || probe(DeviceKind::DiscreteGpu(0)).or_else(|| probe(DeviceKind::IntegratedGpu(0)));
    match choice {
        DeviceChoice::Cpu => Ok(flex()),
        DeviceChoice::Auto => Ok(gpu().unwrap_or_else(flex)),
        DeviceChoice::Wgpu => gpu().ok_or_else(|| {
            anyhow::anyhow!(
                "--device wgpu: no GPU adapter found through wgpu (looked for a discrete, then \
                 an integrated GPU; a GPU needs its Vulkan/Metal/DX12 driver); {LAVAPIPE}"
            )
        }),
        DeviceChoice::WgpuCpu => probe(DeviceKind::Cpu).ok_or_else(|| {
            anyhow::anyhow!(
                "--device wgpu-cpu: no CPU adapter found through wgpu (no Vulkan loader or no \
                 software Vulkan driver); {LAVAPIPE}"
            )
        }),
    }
}

/// The wgpu device of this kind if it exists and computes: CubeCL panics when it finds no
/// adapter, so the first use runs under `catch_unwind`, with the panic message silenced.
#[cfg(feature = "wgpu")]
fn probe(kind: burn::tensor::DeviceKind) -> Option<Chosen> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(|| {
        let device = Device::wgpu(kind.clone());
        let one = Tensor::<1>::ones([1], &device).into_scalar::<f32>();
        (one == 1.0).then_some(device)
    });
    std::panic::set_hook(hook);
    let device = found.ok().flatten()?;
    Some(Chosen {
        name: format!("wgpu {kind:?} ({:?})", device.as_dispatch()),
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_flex_and_cpu_resolves_without_a_gpu() {
        assert_eq!(name(), "cpu (Flex)");
        assert_eq!(resolve(DeviceChoice::Cpu).unwrap().name, "cpu (Flex)");
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn a_wgpu_device_without_the_feature_is_a_clear_error() {
        for choice in [DeviceChoice::Wgpu, DeviceChoice::WgpuCpu] {
            let error = resolve(choice).err().unwrap().to_string();
            assert!(error.contains("--features wgpu"), "{error}");
        }
        assert_eq!(resolve(DeviceChoice::Auto).unwrap().name, "cpu (Flex)");
    }
}
