#ifndef CNODELEASE_SHIMS_H
#define CNODELEASE_SHIMS_H

/// Asks the kernel to send `signal` to this process when its parent thread exits
/// (PR_SET_PDEATHSIG; Linux only, 0 elsewhere). prctl is variadic, so Swift cannot call it.
int nodelease_set_parent_death_signal(int signal);

#endif
