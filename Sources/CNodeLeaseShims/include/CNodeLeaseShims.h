#ifndef CNODELEASE_SHIMS_H
#define CNODELEASE_SHIMS_H

#include <spawn.h>

/// Asks the kernel to send `signal` to this process when its parent thread exits
/// (PR_SET_PDEATHSIG; Linux only, 0 elsewhere). prctl is variadic, so Swift cannot call it.
int nodelease_set_parent_death_signal(int signal);

/// The child closes every descriptor from `lowest` up: posix_spawn_file_actions_addclosefrom_np
/// (glibc 2.34, which Swift's Glibc module does not export), else one close action for each
/// descriptor open now.
int nodelease_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest);

/// Marks every descriptor from `lowest` up close-on-exec (close_range with
/// CLOSE_RANGE_CLOEXEC, else one at a time): they go at the next exec, and nothing this
/// process still uses until then is closed under it.
void nodelease_cloexec_from(int lowest);

/// pipe2(ends, O_CLOEXEC), which Swift's Glibc module does not export either.
int nodelease_pipe_cloexec(int ends[2]);

/// Allocations of at least `bytes` get pages of their own (glibc's M_MMAP_THRESHOLD), given
/// back to the kernel when freed. Fixing it also stops glibc raising the threshold after a
/// large free, which otherwise keeps a freed snapshot buffer's pages in the heap. Returns 1 on
/// success, 0 where it is not supported.
int nodelease_malloc_large_chunks_from(int bytes);

#endif
