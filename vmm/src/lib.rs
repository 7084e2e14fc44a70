//! snapvmm's VMM: KVM VM and vCPU set-up, guest memory, kernel loading and the vCPU run loop.
