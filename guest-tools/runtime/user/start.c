/* start.c - program start and end, and what the kernel told us about the machine. */
#include "rt.h"

#define DEBUG_EXIT_PORT 0xf4

int main(void);
RT_NORETURN void rt_start(const struct rt_boot_info *info);

static const struct rt_boot_info *boot_info;

/* The program's constructors (the linker script collects them); clang's coverage
 * instrumentation numbers its guards in one. */
typedef void (*constructor_fn)(void);
extern constructor_fn __init_array_start[], __init_array_end[];

RT_NORETURN void rt_start(const struct rt_boot_info *info)
{
    boot_info = info;
    if (info->magic != RT_BOOT_INFO_MAGIC || info->version != RT_BOOT_INFO_VERSION)
        rt_abort("boot info from the kernel has an unknown magic or version");
    for (constructor_fn *constructor = __init_array_start; constructor < __init_array_end; constructor++)
        (*constructor)();
    rt_exit((uint32_t)main());
}

RT_NORETURN void rt_exit(uint32_t code)
{
    rt_outl(DEBUG_EXIT_PORT, code);
    /* No debug-exit device: nothing else can end the program from user mode. */
    for (;;)
        __asm__ volatile("pause");
}

RT_NORETURN void rt_abort(const char *message)
{
    rt_print("\nrt: abort: ");
    rt_print(message);
    rt_print("\n");
    rt_exit(RT_EXIT_ABORT);
}

const struct rt_boot_info *rt_boot_info(void)
{
    return boot_info;
}

const char *rt_cmdline(void)
{
    return boot_info->cmdline;
}

const char *rt_cmdline_value(const char *key)
{
    size_t key_length = strlen(key);
    const char *cmdline = boot_info->cmdline;
    for (const char *at = cmdline; *at; at++) {
        if ((at == cmdline || at[-1] == ' ') && strncmp(at, key, key_length) == 0 && at[key_length] == '=')
            return at + key_length + 1;
    }
    return NULL;
}

unsigned rt_cpl(void)
{
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3;
}
