#ifndef CNODELEASE_SHIMS_H
#define CNODELEASE_SHIMS_H

#include <spawn.h>

/// Asks the kernel to send `signal` to this process when its parent thread exits
/// (PR_SET_PDEATHSIG; Linux only, 0 elsewhere). prctl is variadic, so Swift cannot call it.
int nodelease_set_parent_death_signal(int signal);

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): the child closes every descriptor
/// from `lowest` up. Swift's Glibc module does not export it (it needs _GNU_SOURCE).
int nodelease_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest);

/// pipe2(ends, O_CLOEXEC), which Swift's Glibc module does not export either.
int nodelease_pipe_cloexec(int ends[2]);

/// closefrom(lowest) (glibc 2.34, _GNU_SOURCE): closes every descriptor from `lowest` up.
void nodelease_close_from(int lowest);

#endif
