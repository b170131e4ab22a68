#if defined(__linux__)
#define _GNU_SOURCE 1
#endif
#include "CNodeLeaseShims.h"

#include <fcntl.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/prctl.h>

int nodelease_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0); }

int nodelease_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
}

int nodelease_pipe_cloexec(int ends[2]) { return pipe2(ends, O_CLOEXEC); }

void nodelease_close_from(int lowest) { closefrom(lowest); }
#else
int nodelease_set_parent_death_signal(int signal) { (void)signal; return 0; }

int nodelease_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest) {
    (void)actions;
    (void)lowest;
    return 0;
}

void nodelease_close_from(int lowest) {
    for (int fd = lowest; fd < 1024; fd++) close(fd);
}

int nodelease_pipe_cloexec(int ends[2]) {
    if (pipe(ends) != 0) return -1;
    fcntl(ends[0], F_SETFD, FD_CLOEXEC);
    fcntl(ends[1], F_SETFD, FD_CLOEXEC);
    return 0;
}
#endif
