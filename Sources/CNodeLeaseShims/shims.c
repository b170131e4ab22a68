#if defined(__linux__)
#define _GNU_SOURCE 1
#endif
#include "CNodeLeaseShims.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

/// Descriptors looked at one by one where the system cannot do a whole range at once.
static int highest_descriptor(void) {
    long limit = sysconf(_SC_OPEN_MAX);
    return (int)(limit < 0 || limit > 65536 ? 65536 : limit);
}

#if defined(__linux__)
int nodelease_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0); }
#else
int nodelease_set_parent_death_signal(int signal) {
    (void)signal;
    return 0;
}
#endif

int nodelease_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
#else
    // Every descriptor open now; one opened by another thread meanwhile may stay open.
    int top = highest_descriptor();
    for (int fd = lowest; fd < top; fd++) {
        if (fcntl(fd, F_GETFD) < 0) continue;
        int rc = posix_spawn_file_actions_addclose(actions, fd);
        if (rc != 0) return rc;
    }
    return 0;
#endif
}

void nodelease_cloexec_from(int lowest) {
#if defined(__linux__) && defined(SYS_close_range)
    // close_range(CLOSE_RANGE_CLOEXEC): Linux 5.11.
    if (syscall(SYS_close_range, (unsigned)lowest, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) == 0) return;
#endif
    int top = highest_descriptor();
    for (int fd = lowest; fd < top; fd++) {
        int flags = fcntl(fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
}

int nodelease_pipe_cloexec(int ends[2]) {
#if defined(__linux__)
    return pipe2(ends, O_CLOEXEC);
#else
    if (pipe(ends) != 0) return -1;
    fcntl(ends[0], F_SETFD, FD_CLOEXEC);
    fcntl(ends[1], F_SETFD, FD_CLOEXEC);
    return 0;
#endif
}

#if defined(__GLIBC__)
int nodelease_malloc_large_chunks_from(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }
#else
int nodelease_malloc_large_chunks_from(int bytes) {
    (void)bytes;
    return 0;
}
#endif
