/*
 * fault - makes the user program take a CPU exception, for testing how the kernel reports it.
 * The command line picks the kind (default: null-read):
 *   null-read    read from address 0x8 (unmapped)      -> #PF vector 14, error 0x4, cr2 0x8
 *   null-write   write to address 0x10 (unmapped)      -> #PF vector 14, error 0x6, cr2 0x10
 *   code-write   write to the program's own text        -> #PF vector 14, error 0x7
 *   kernel-read  read the kernel's memory at 1 MiB      -> #PF vector 14, error 0x5
 *   stack-overflow  recurse into the guard page        -> #PF vector 14, error 0x6
 *   ud2          invalid opcode                        -> #UD vector 6
 *   int3         breakpoint                            -> #BP vector 3
 *   divide       divide by zero                        -> #DE vector 0
 *   hlt          privileged instruction                -> #GP vector 13
 * The exit code is 32 + vector; if no fault happens the program exits with 1.
 */
#include "rt.h"

static volatile uint64_t sink;
/* Addresses the compiler cannot see through, so it neither warns nor folds the access. */
static volatile uintptr_t null_read_address = 0x8, null_write_address = 0x10;

static __attribute__((noinline)) uint64_t recurse(uint64_t depth)
{
    volatile uint8_t frame[4096];
    frame[0] = (uint8_t)depth;
    if (depth == UINT64_MAX) /* never: the guard page stops the recursion long before */
        return 0;
    return recurse(depth + 1) + frame[0];
}

int main(void)
{
    const char *kind = rt_cmdline();
    if (kind[0] == 0)
        kind = "null-read";
    rt_printf("fault: %s\n", kind);
    if (!strcmp(kind, "null-read")) {
        sink = *(volatile uint64_t *)null_read_address;
    } else if (!strcmp(kind, "null-write")) {
        *(volatile uint64_t *)null_write_address = 1;
    } else if (!strcmp(kind, "code-write")) {
        *(volatile uint8_t *)(uintptr_t)&main = 0xcc;
    } else if (!strcmp(kind, "kernel-read")) {
        sink = *(volatile uint64_t *)(uintptr_t)RT_KERNEL_BASE;
    } else if (!strcmp(kind, "stack-overflow")) {
        sink = recurse(0);
    } else if (!strcmp(kind, "ud2")) {
        __asm__ volatile("ud2");
    } else if (!strcmp(kind, "int3")) {
        __asm__ volatile("int3");
    } else if (!strcmp(kind, "divide")) {
        /* in asm: gcc folds 1 / x into (x == 1) */
        uint32_t quotient = 1, remainder = 0, divisor = 0;
        __asm__ volatile("divl %2" : "+a"(quotient), "+d"(remainder) : "r"(divisor));
        sink = quotient;
    } else if (!strcmp(kind, "hlt")) {
        __asm__ volatile("hlt");
    } else {
        rt_printf("fault: unknown kind '%s'\n", kind);
        return 2;
    }
    rt_printf("fault: no exception happened\n");
    return 1;
}
