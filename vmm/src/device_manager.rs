//! The VM's devices and how guest accesses reach them.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::debug_exit::{DebugExitDevice, DEBUG_EXIT_PORT_BASE, DEBUG_EXIT_PORT_LEN};
use devices::i8042::{I8042Device, I8042_PORT_BASE, I8042_PORT_LEN};
use devices::pci::{BarRelocation, PciBus, PCI_CONFIG_PORT_BASE, PCI_CONFIG_PORT_LEN};
use devices::serial::{SerialDevice, COM1_IRQ, COM1_PORT_BASE, SERIAL_PORT_LEN};
use devices::{DeviceAction, PioBus};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use thiserror::Error;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vcpu::IoBus;

#[derive(Debug, Error)]
pub enum DeviceManagerError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot connect {what} to its interrupt line: {source}")]
    Irqfd {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot create {what}: {why}")]
    Device { what: &'static str, why: String },
}

/// All devices of the VM, reachable by port or address.
pub struct DeviceManager {
    pio: PioBus,
    serial: Arc<Mutex<SerialDevice>>,
    pci: Arc<Mutex<PciBus>>,
}

impl DeviceManager {
    /// Creates the devices and wires their interrupts into the in-kernel irqchip.
    pub fn new(
        vm_fd: &VmFd,
        serial_out: Box<dyn std::io::Write + Send>,
    ) -> Result<Self, DeviceManagerError> {
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|source| DeviceManagerError::Irqfd {
                what: "COM1",
                source,
            })?;
        let serial =
            SerialDevice::new(serial_irq, serial_out).map_err(|e| DeviceManagerError::Device {
                what: "COM1",
                why: e.to_string(),
            })?;
        let serial = Arc::new(Mutex::new(serial));
        let mut pio = PioBus::default();
        pio.insert(COM1_PORT_BASE, SERIAL_PORT_LEN, Box::new(serial.clone()));
        pio.insert(
            I8042_PORT_BASE,
            I8042_PORT_LEN,
            Box::new(I8042Device::new()),
        );
        let pci = Arc::new(Mutex::new(PciBus::new()));
        pio.insert(
            PCI_CONFIG_PORT_BASE,
            PCI_CONFIG_PORT_LEN,
            Box::new(pci.clone()),
        );
        pio.insert(
            DEBUG_EXIT_PORT_BASE,
            DEBUG_EXIT_PORT_LEN,
            Box::new(DebugExitDevice::new()),
        );
        Ok(DeviceManager { pio, serial, pci })
    }

    /// Forwards the host's stdin to COM1 until the returned handle is dropped.
    pub fn start_stdin_forwarding(&self) -> Option<StdinForwarder> {
        StdinForwarder::start(self.serial.clone()).ok()
    }
}

impl DeviceManager {
    /// Follows a guest's BAR re-programming. BARs whose accesses trap are routed by the bus
    /// itself; nothing else needs moving yet.
    fn follow_bars(&mut self, action: DeviceAction) -> DeviceAction {
        match action {
            DeviceAction::BarsRelocated(relocations) => {
                for relocation in relocations.iter() {
                    self.move_bar(relocation);
                }
                DeviceAction::None
            }
            other => other,
        }
    }

    fn move_bar(&mut self, relocation: BarRelocation) {
        tracing::debug!(?relocation, "guest moved a PCI BAR");
    }

    fn pci(&self) -> std::sync::MutexGuard<'_, PciBus> {
        self.pci
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl IoBus for DeviceManager {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        self.pio.read(port, data);
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> DeviceAction {
        let action = self.pio.write(port, data);
        self.follow_bars(action)
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        // Unclaimed MMIO reads as all ones (the bus does that), like a PC with nothing there.
        self.pci().mmio_read(addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> DeviceAction {
        let action = self.pci().mmio_write(addr, data);
        self.follow_bars(action)
    }
}

/// Reads the host's stdin on an event-manager thread and queues the bytes into COM1.
pub struct StdinForwarder {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

struct StdinSubscriber {
    serial: Arc<Mutex<SerialDevice>>,
    stop_event: Arc<EventFd>,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StdinSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.stop_event.as_raw_fd() {
            self.stopped.store(true, Ordering::SeqCst);
            return;
        }
        let mut buf = [0u8; 256];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                // End of input: stop watching stdin, keep the guest running.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                if let Ok(mut serial) = self.serial.lock() {
                    serial.enqueue_input(&buf[..n]);
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.stop_event.as_ref(), EventSet::IN));
        // Regular files and /dev/null cannot be polled; the guest then simply gets no input.
        let _ = ops.add(Events::new(&std::io::stdin(), EventSet::IN));
    }
}

impl StdinForwarder {
    fn start(serial: Arc<Mutex<SerialDevice>>) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let stopped = Arc::new(AtomicBool::new(false));
        let mut manager = EventManager::<StdinSubscriber>::new()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        manager.add_subscriber(StdinSubscriber {
            serial,
            stop_event: stop.clone(),
            stopped: stopped.clone(),
        });
        let thread = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                crate::signals::block_async_signals();
                while !stopped.load(Ordering::SeqCst) {
                    if manager.run().is_err() {
                        break;
                    }
                }
            })?;
        Ok(StdinForwarder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StdinForwarder {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
