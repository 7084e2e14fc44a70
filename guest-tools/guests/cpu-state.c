/*
 * cpu-state - checks the CPU state the runtime promises its programs (runtime/README.md, "CPU
 * state seen by the program") on whatever VMM runs it: CR0.MP/NE set, CR0.EM/TS clear,
 * CR4.OSFXSR/OSXMMEXCPT set (read through the RT_SYS_READ_CR service), and then executes SSE,
 * SSE2 and x87 instructions and checks their results. kvm_pvm runs SSE at CPL3 even with
 * CR4.OSFXSR clear, hardware KVM raises #UD: the register check is what catches a missing
 * enable here, the instructions are what fail on hardware.
 *
 * Prints `cpu-state: cr0 0x... cr4 0x...` and `cpu-state: PASS`.
 * Exit codes: 0 pass; 1 a CR0 bit wrong; 2 a CR4 bit wrong; 3 an SSE result wrong; 4 an x87
 * result wrong; 5 MXCSR not 0x1f80; an SSE instruction that faults exits 38 (#UD).
 */
#include "rt.h"

#define CR0_MP 0x2u
#define CR0_EM 0x4u
#define CR0_TS 0x8u
#define CR0_NE 0x20u
#define CR4_OSFXSR 0x200u
#define CR4_OSXMMEXCPT 0x400u

int main(void)
{
    uint64_t cr0 = rt_sys_read_cr(0), cr4 = rt_sys_read_cr(4);
    rt_printf("cpu-state: cr0 0x%lx cr4 0x%lx\n", (unsigned long)cr0, (unsigned long)cr4);
    if ((cr0 & (CR0_MP | CR0_NE)) != (CR0_MP | CR0_NE) || (cr0 & (CR0_EM | CR0_TS))) {
        rt_printf("cpu-state: FAIL: CR0 needs MP and NE set, EM and TS clear\n");
        return 1;
    }
    if ((cr4 & (CR4_OSFXSR | CR4_OSXMMEXCPT)) != (CR4_OSFXSR | CR4_OSXMMEXCPT)) {
        rt_printf("cpu-state: FAIL: CR4 needs OSFXSR and OSXMMEXCPT set\n");
        return 2;
    }

    uint32_t mxcsr;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    if (mxcsr != 0x1f80) {
        rt_printf("cpu-state: FAIL: MXCSR 0x%x\n", mxcsr);
        return 5;
    }

    /* SSE (addps), SSE2 (paddq, cvtsi2sd/mulsd/cvttsd2si) through explicit instructions, so the
     * compiler cannot fold them away. */
    static const float a[4] __attribute__((aligned(16))) = {1.5f, 2.5f, -3.0f, 4.0f};
    static const float b[4] __attribute__((aligned(16))) = {0.5f, 0.5f, 1.0f, -8.0f};
    float sum[4] __attribute__((aligned(16)));
    __asm__ volatile("movaps %1, %%xmm0\n\taddps %2, %%xmm0\n\tmovaps %%xmm0, %0"
                     : "=m"(sum)
                     : "m"(a), "m"(b)
                     : "xmm0");
    uint64_t lanes[2] __attribute__((aligned(16))) = {40, 0xffffffffffffffffull};
    static const uint64_t add[2] __attribute__((aligned(16))) = {2, 2};
    __asm__ volatile("movdqa %0, %%xmm1\n\tpaddq %1, %%xmm1\n\tmovdqa %%xmm1, %0" : "+m"(lanes) : "m"(add) : "xmm1");
    int64_t product;
    __asm__ volatile("cvtsi2sd %1, %%xmm2\n\tmulsd %%xmm2, %%xmm2\n\tcvttsd2si %%xmm2, %0"
                     : "=r"(product)
                     : "r"((int64_t)12)
                     : "xmm2");
    if (sum[0] != 2.0f || sum[1] != 3.0f || sum[2] != -2.0f || sum[3] != -4.0f || lanes[0] != 42 || lanes[1] != 1 ||
        product != 144) {
        rt_printf("cpu-state: FAIL: SSE results\n");
        return 3;
    }

    /* x87: 3 * 7 through the FPU stack. */
    int32_t x = 3, y = 7, z = 0;
    __asm__ volatile("fildl %1\n\tfildl %2\n\tfmulp\n\tfistpl %0" : "=m"(z) : "m"(x), "m"(y));
    if (z != 21) {
        rt_printf("cpu-state: FAIL: x87 result %d\n", z);
        return 4;
    }
    rt_printf("cpu-state: PASS\n");
    return 0;
}
