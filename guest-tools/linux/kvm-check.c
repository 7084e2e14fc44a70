// kvm-check: prove that /dev/kvm in the outer Linux (L1) is a working hardware-style KVM.
//
// Opens /dev/kvm, checks KVM_GET_API_VERSION == 12, prints the kvm_amd/kvm module parameters and a
// few capabilities, creates a VM with one vCPU and runs a real-mode guest that does
// `out 0x10, al` (al = 0x2a) and `hlt`; both exits must arrive as expected. Also reports the
// userfaultfd features of the kernel (snapvmm relies on UFFD_FEATURE_WP_ASYNC).
// Prints "kvm-check: OK" and exits 0 on success, prints "kvm-check: FAIL ..." and exits 1 otherwise.
// Build: gcc -O2 -static -o kvm-check kvm-check.c
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define GUEST_MEM (64 * 1024)
#define GUEST_CODE 0x1000
#define OUT_PORT 0x10
#define OUT_VALUE 0x2a

static void fail(const char *what) {
  printf("kvm-check: FAIL %s: %s\n", what, strerror(errno));
  exit(1);
}

static void print_params(const char *module) {
  char dir[128];
  snprintf(dir, sizeof dir, "/sys/module/%s/parameters", module);
  DIR *d = opendir(dir);
  if (d == NULL) {
    printf("%s: no parameters (module not loaded?)\n", module);
    return;
  }
  printf("%s parameters:", module);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[512], value[128] = "";
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL) continue;
    if (fgets(value, sizeof value, f) != NULL) value[strcspn(value, "\n")] = '\0';
    fclose(f);
    printf(" %s=%s", e->d_name, value);
  }
  printf("\n");
  closedir(d);
}

static void print_uffd_features(void) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    printf("userfaultfd: unavailable: %s\n", strerror(errno));
    return;
  }
  struct uffdio_api api = {.api = UFFD_API, .features = 0};
  if (ioctl(fd, UFFDIO_API, &api) < 0) {
    printf("userfaultfd: UFFDIO_API failed: %s\n", strerror(errno));
  } else {
    unsigned long long f = api.features;
    printf("userfaultfd features=0x%llx wp_async=%d\n", f, !!(f & (1ull << 15)));
  }
  close(fd);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) fail("open /dev/kvm");
  int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
  printf("KVM_GET_API_VERSION=%d\n", api);
  if (api != KVM_API_VERSION) {
    printf("kvm-check: FAIL API version %d, expected %d\n", api, KVM_API_VERSION);
    return 1;
  }
  print_params("kvm_amd");
  print_params("kvm");
  printf("caps: NR_VCPUS=%d IRQCHIP=%d USER_MEMORY=%d DIRTY_LOG_RING=%d MANUAL_DIRTY_LOG_PROTECT2=%d "
         "SYNC_REGS=%d\n",
         ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS), ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP),
         ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY),
         ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING),
         ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2),
         ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS));
  print_uffd_features();

  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) fail("KVM_CREATE_VM");
  uint8_t *mem = mmap(NULL, GUEST_MEM, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) fail("mmap guest memory");
  // mov al, 0x2a; out 0x10, al; hlt
  const uint8_t code[] = {0xb0, OUT_VALUE, 0xe6, OUT_PORT, 0xf4};
  memcpy(mem + GUEST_CODE, code, sizeof code);
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = GUEST_MEM, .userspace_addr = (uint64_t)(uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) fail("KVM_SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) fail("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) fail("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) fail("mmap kvm_run");
  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) fail("KVM_GET_SREGS");
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) fail("KVM_SET_SREGS");
  struct kvm_regs regs = {.rip = GUEST_CODE, .rflags = 2};
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) fail("KVM_SET_REGS");

  if (ioctl(vcpu, KVM_RUN, 0) < 0) fail("KVM_RUN (1)");
  if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT || run->io.port != OUT_PORT ||
      ((uint8_t *)run)[run->io.data_offset] != OUT_VALUE) {
    printf("kvm-check: FAIL first exit: reason=%u port=0x%x, expected an out of 0x%x to port 0x%x\n",
           run->exit_reason, run->io.port, OUT_VALUE, OUT_PORT);
    return 1;
  }
  if (ioctl(vcpu, KVM_RUN, 0) < 0) fail("KVM_RUN (2)");
  if (run->exit_reason != KVM_EXIT_HLT) {
    printf("kvm-check: FAIL second exit: reason=%u, expected KVM_EXIT_HLT (%u)\n", run->exit_reason,
           KVM_EXIT_HLT);
    return 1;
  }
  printf("guest ran: out 0x%x -> port 0x%x, then hlt\n", OUT_VALUE, OUT_PORT);
  printf("kvm-check: OK\n");
  return 0;
}
