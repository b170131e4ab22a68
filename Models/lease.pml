/*
 * NodeLease's lease timing, for every interleaving (spin). One hostname, so one node ID;
 * two installations (holders A and B) that want it; a leader that changes; a network that
 * delays, drops and reorders requests and answers; and clocks whose rates differ within the
 * margin. What each rule corresponds to in the code is in the README ("The lease protocol,
 * model-checked").
 *
 * Time is discrete. T is real time and also both holders' clocks (the reference). LC is the
 * current leader's monotonic clock: it may run fast, gaining one tick at most once every
 * K+M real ticks (a rate within the margin of the holders'); a new leader's clock starts
 * anywhere from T to T+2 (another machine).
 *
 * Rules (each can be broken with -D, see scripts/model-check):
 *   margin         the leader expires a lease K+M of its ticks after it applied the last
 *                  renewal (NO_MARGIN: after K);
 *   failover reset a new leader, once its first entry commits, restarts every live lease's
 *                  countdown at the full K+M on its own clock (NO_FAILOVER_RESET: it counts
 *                  from the leader time recorded with the last renewal);
 *   conditional    an expire names the renewal it was decided on and does nothing if the
 *                  lease was renewed since (EXPIRE_UNCONDITIONAL: it ends the lease anyway);
 *   send instant   a holder counts its lease valid until the instant it sent its last
 *                  successful renew or acquire, plus K, by its own clock
 *                  (COUNT_FROM_ANSWER: from when the answer arrived).
 *
 * Properties (assertions, checked in every state or at the step they are about):
 *   P1 never two holders that both believe they hold the node ID;
 *   P2 a holder has stopped using the node ID when an expiry of its lease commits;
 *   P3 an expiry never ends a lease renewed (applied, so answered 200) after it was decided
 *      (a ghost flag set by every renewal and cleared by each expiry decision, asserted
 *      where the expiry takes effect, independently of the rule that guards it);
 *   P4 fencing tokens (the index of the granting entry) strictly increase: this checks the
 *      log abstraction (indexes reused after a leader change drops entries), not a rule that
 *      a variant here breaks.
 */

#ifndef K
#define K 2             /* TTL, in ticks */
#endif
#ifndef M
#define M 1             /* the margin, in ticks (half the TTL: the ratio is what matters) */
#endif
#ifndef TMAX
#define TMAX 7          /* real time explored */
#endif
#ifndef SENDS
#define SENDS 2         /* requests A sends at most: acquires and renews */
#endif
#ifndef SENDS_B
#define SENDS_B 1       /* acquires B sends at most (B only acquires, then holds) */
#endif
#ifndef CHANGES
#define CHANGES 1       /* leader changes at most */
#endif
#define NONE 0

#ifdef NO_MARGIN
#define WAIT K
#else
#define WAIT (K + M)
#endif

/* Request and log entry kinds. */
#define ACQ 1
#define REN 2
#define REL 3
#define EXP 4

/* Node status. */
#define ABSENT 0
#define ACTIVE 1
#define STALE 2
#define INACTIVE 3

byte T;                 /* real time, and the holders' clocks */
byte LC;                /* the leader's clock */
byte sinceGain = K + M;  /* real ticks since the leader's clock last gained one (saturates) */
byte changes;           /* leader changes so far */
bool ready = true;      /* the leader's first entry of its term has committed */

/* The registry (replicated: every replica applies the same entries in the same order). */
byte status = ABSENT;
byte leaseId;           /* the current grant's index, which is also its fencing token */
byte leaseHolder;
byte renewalIndex;      /* index of the entry that last granted or renewed it */
byte stampLC;           /* the applying leader's clock at that entry (NO_FAILOVER_RESET) */
byte lastToken;         /* P4 */
bool renewedSinceDecision;  /* P3's ghost: the lease was renewed after the pending expiry was decided */

/* The leader's expiry state (LeaseExpiry). */
bool dlSet;
byte dl;                /* deadline on LC */
byte dlRenewal;         /* the renewal it counts from */

/* The log: entries proposed and not yet applied, in index order. */
typedef Entry {
    byte kind; byte holder; byte lease; byte arg; byte seq; byte index; byte stamp
};
Entry log[4];    /* three proposals and a new leader's no-op */
byte nlog;
byte nextIndex = 1;     /* the index the next proposal gets */
byte lastApplied;

/* The network: at most two requests and two answers in flight, delivered in any order. */
typedef Req { byte kind; byte holder; byte lease; byte seq };
Req req[2];
bool reqUsed[2];
typedef Ans { byte holder; bool ok; byte lease; byte seq };
Ans ans[2];
bool ansUsed[2];

/* The holders (LeaseKeeper): 0 is A, 1 is B. */
bool has[2];            /* holds a lease (not yet declared lost) */
byte hlease[2];
byte hdeadline[2];      /* valid while T < hdeadline */
bool inflight[2];
byte hseq[2];
byte hsent[2];          /* the clock when the request in flight was sent */
byte hkind[2];
byte sends[2];

#define valid(h) (has[h] && T < hdeadline[h])

/* When both slots are taken, the oldest answer is lost. */
inline answer(h, okv, l, s) {
    if
    :: ansUsed[0] && ansUsed[1] ->
        ans[0].holder = ans[1].holder; ans[0].ok = ans[1].ok; ans[0].lease = ans[1].lease; ans[0].seq = ans[1].seq; ansUsed[1] = false
    :: else -> skip
    fi;
    if
    :: !ansUsed[0] -> ans[0].holder = h; ans[0].ok = okv; ans[0].lease = l; ans[0].seq = s; ansUsed[0] = true
    :: else -> ans[1].holder = h; ans[1].ok = okv; ans[1].lease = l; ans[1].seq = s; ansUsed[1] = true
    fi
}

/* The leader's apply hook: a live lease gets a deadline from its latest renewal. */
inline track() {
    if
    :: ready && status == ACTIVE && (!dlSet || dlRenewal != renewalIndex) ->
        dlSet = true; dl = LC + WAIT; dlRenewal = renewalIndex
    :: ready && status != ACTIVE -> dlSet = false; dl = 0; dlRenewal = 0
    :: else -> skip
    fi
}

/* Applies log[0] (at index log[0].index) and removes it from the log. */
inline applyFirst() {
    lastApplied = log[0].index;
    if
    :: log[0].kind == 0 -> skip   /* a new leader's no-op */
    :: log[0].kind == ACQ ->
        if
        :: status == ACTIVE && leaseHolder != log[0].holder ->
            printf("t=%d  apply %d: acquire by %c refused (held by %c)\n", T, log[0].index, 'A' + log[0].holder, 'A' + leaseHolder);
            ph = log[0].holder; ps = log[0].seq; pl = 0; answer(ph, false, pl, ps)
        :: status == ACTIVE && leaseHolder == log[0].holder ->
            renewalIndex = log[0].index; renewedSinceDecision = true;
#ifdef NO_FAILOVER_RESET
            stampLC = log[0].stamp;
#endif
           
            printf("t=%d  apply %d: acquire by %c again: lease %d renewed\n", T, log[0].index, 'A' + log[0].holder, leaseId);
            ph = log[0].holder; ps = log[0].seq; pl = leaseId; answer(ph, true, pl, ps)
        :: else ->
            assert(log[0].index > lastToken);   /* P4 */
            lastToken = log[0].index;
            status = ACTIVE; leaseId = log[0].index; leaseHolder = log[0].holder;
            renewalIndex = log[0].index;
#ifdef NO_FAILOVER_RESET
            stampLC = log[0].stamp;
#endif
           
            printf("t=%d  apply %d: lease %d granted to %c (fencing token %d)\n", T, log[0].index, leaseId, 'A' + leaseHolder, leaseId);
            ph = log[0].holder; ps = log[0].seq; pl = leaseId; answer(ph, true, pl, ps)
        fi
    :: log[0].kind == REN ->
        if
        :: status == ACTIVE && leaseId == log[0].lease ->
            renewalIndex = log[0].index; renewedSinceDecision = true;
#ifdef NO_FAILOVER_RESET
            stampLC = log[0].stamp;
#endif
           
            printf("t=%d  apply %d: lease %d renewed (leader clock %d)\n", T, log[0].index, leaseId, LC);
            ph = log[0].holder; ps = log[0].seq; pl = leaseId; answer(ph, true, pl, ps)
        :: else ->
            printf("t=%d  apply %d: renew of lease %d: 404\n", T, log[0].index, log[0].lease);
            ph = log[0].holder; ps = log[0].seq; pl = log[0].lease; answer(ph, false, pl, ps)
        fi
    :: log[0].kind == REL ->
        if
        :: status == ACTIVE && leaseId == log[0].lease ->
            status = INACTIVE;
            printf("t=%d  apply %d: lease %d released\n", T, log[0].index, leaseId)
        :: else -> skip
        fi
    :: log[0].kind == EXP ->
        if
#ifdef EXPIRE_UNCONDITIONAL
        :: status == ACTIVE && leaseId == log[0].lease ->
#else
        :: status == ACTIVE && leaseId == log[0].lease && renewalIndex == log[0].arg ->
#endif
            printf("t=%d  apply %d: lease %d of %c EXPIRED (decided on renewal %d)\n", T, log[0].index, leaseId, 'A' + leaseHolder, log[0].arg);
            assert(!(has[leaseHolder] && hlease[leaseHolder] == leaseId && T < hdeadline[leaseHolder]));  /* P2 */
            assert(!renewedSinceDecision);                                                                   /* P3 */
            status = STALE
        :: else ->
            printf("t=%d  apply %d: expire of lease %d: renewed since, nothing\n", T, log[0].index, log[0].lease)
        fi
    fi;
    track();
    log[0].kind = log[1].kind; log[0].holder = log[1].holder; log[0].lease = log[1].lease;
    log[0].arg = log[1].arg; log[0].seq = log[1].seq; log[0].index = log[1].index; log[0].stamp = log[1].stamp;
    log[1].kind = log[2].kind; log[1].holder = log[2].holder; log[1].lease = log[2].lease;
    log[1].arg = log[2].arg; log[1].seq = log[2].seq; log[1].index = log[2].index; log[1].stamp = log[2].stamp;
    log[2].kind = log[3].kind; log[2].holder = log[3].holder; log[2].lease = log[3].lease;
    log[2].arg = log[3].arg; log[2].seq = log[3].seq; log[2].index = log[3].index; log[2].stamp = log[3].stamp;
    log[3].kind = 0; log[3].holder = 0; log[3].lease = 0; log[3].arg = 0; log[3].seq = 0; log[3].index = 0; log[3].stamp = 0;
    nlog--;
    ph = 0; pl = 0; ps = 0
}

inline propose(k, h, l, a, s) {
    log[nlog].kind = k; log[nlog].holder = h; log[nlog].lease = l; log[nlog].arg = a; log[nlog].seq = s;
    log[nlog].index = nextIndex;
#ifdef NO_FAILOVER_RESET
    log[nlog].stamp = LC;
#endif
    nextIndex++;
    nlog++
}

inline kindName(k) {
    if
    :: k == ACQ -> printf("acquire")
    :: k == REN -> printf("renew")
    :: k == REL -> printf("release")
    :: else -> printf("?")
    fi
}

/* Slot 1 is used only with slot 0 (fewer equivalent states); after slot 0 empties, slot 1 moves down. */
inline compactReq() {
    if
    :: !reqUsed[0] && reqUsed[1] ->
        req[0].kind = req[1].kind; req[0].holder = req[1].holder; req[0].lease = req[1].lease; req[0].seq = req[1].seq;
        reqUsed[0] = true; reqUsed[1] = false; req[1].kind = 0; req[1].holder = 0; req[1].lease = 0; req[1].seq = 0
    :: else -> skip
    fi
}

inline compactAns() {
    if
    :: !ansUsed[0] && ansUsed[1] ->
        ans[0].holder = ans[1].holder; ans[0].ok = ans[1].ok; ans[0].lease = ans[1].lease; ans[0].seq = ans[1].seq;
        ansUsed[0] = true; ansUsed[1] = false; ans[1].holder = 0; ans[1].ok = false; ans[1].lease = 0; ans[1].seq = 0
    :: else -> skip
    fi
}

inline deliver(i) {
    printf("t=%d  the leader (clock %d) receives %c's ", T, LC, 'A' + req[i].holder); kk = req[i].kind; kindName(kk); printf("\n");
    ph = req[i].holder; pl = req[i].lease; ps = req[i].seq;
    propose(kk, ph, pl, 0, ps);
    kk = 0; ph = 0; pl = 0; ps = 0;
    reqUsed[i] = false; req[i].kind = 0; req[i].holder = 0; req[i].lease = 0; req[i].seq = 0;
    compactReq()
}

inline receive(i) {
    h = ans[i].holder;
    if
    :: inflight[h] && ans[i].seq == hseq[h] ->
        inflight[h] = false;
        if
        :: ans[i].ok && hkind[h] == ACQ ->
            has[h] = true; hlease[h] = ans[i].lease;
#ifdef COUNT_FROM_ANSWER
            hdeadline[h] = T + K;
#else
            hdeadline[h] = hsent[h] + K;
#endif
            printf("t=%d  %c holds lease %d until %d\n", T, 'A' + h, hlease[h], hdeadline[h])
        :: ans[i].ok && hkind[h] == REN && has[h] && hlease[h] == ans[i].lease ->
            /* Accepted unless the watchdog declared the lease lost meanwhile. */
#ifdef COUNT_FROM_ANSWER
            hdeadline[h] = T + K;
#else
            hdeadline[h] = hsent[h] + K;
#endif
            printf("t=%d  %c renewed lease %d: valid until %d\n", T, 'A' + h, hlease[h], hdeadline[h])
        :: !ans[i].ok && hkind[h] == REN && has[h] && hlease[h] == ans[i].lease ->
            has[h] = false; hlease[h] = 0; hdeadline[h] = 0;
            printf("t=%d  %c: 404, stops using the node ID\n", T, 'A' + h)
        :: else -> skip
        fi;
        hsent[h] = 0; hkind[h] = 0
    :: else -> skip   /* an answer to a request given up on */
    fi;
    h = 0;
    ansUsed[i] = false; ans[i].holder = 0; ans[i].ok = false; ans[i].lease = 0; ans[i].seq = 0;
    compactAns()
}

/* Room for one more request: when both slots are taken, the oldest request is lost. */
inline roomForRequest() {
    if
    :: reqUsed[0] && reqUsed[1] ->
        req[0].kind = req[1].kind; req[0].holder = req[1].holder; req[0].lease = req[1].lease; req[0].seq = req[1].seq;
        reqUsed[1] = false; req[1].kind = 0; req[1].holder = 0; req[1].lease = 0; req[1].seq = 0
    :: else -> skip
    fi
}

inline send(h, k) {
    sends[h]++; hseq[h]++; inflight[h] = true; hsent[h] = T; hkind[h] = k;
    roomForRequest();
    if
    :: !reqUsed[0] -> req[0].kind = k; req[0].holder = h; req[0].lease = hlease[h]; req[0].seq = hseq[h]; reqUsed[0] = true
    :: else -> req[1].kind = k; req[1].holder = h; req[1].lease = hlease[h]; req[1].seq = hseq[h]; reqUsed[1] = true
    fi;
    printf("t=%d  %c sends ", T, 'A' + h); kindName(k); printf(" (lease %d)\n", hlease[h])
}

active proctype world() {
    byte h, i, carry, kk, ph, pl, ps;
    do
    :: assert(!(valid(0) && valid(1)));   /* P1 */
       if
       /* Time passes; the leader's clock may gain a tick, within the margin. */
       :: atomic { T < TMAX ->
            T++;
            if :: sinceGain < K + M -> sinceGain++ :: else -> skip fi;
            if
            :: LC++
            :: sinceGain == K + M -> LC = LC + 2; sinceGain = 0
            fi;
            /* Each holder's watchdog fires at its deadline. */
            if :: has[0] && T >= hdeadline[0] -> has[0] = false; hlease[0] = 0; hdeadline[0] = 0; printf("t=%d  A's deadline passed: stops\n", T) :: else -> skip fi;
            if :: has[1] && T >= hdeadline[1] -> has[1] = false; hlease[1] = 0; hdeadline[1] = 0; printf("t=%d  B's deadline passed: stops\n", T) :: else -> skip fi }
       /* A holder sends an acquire (holding nothing) or a renew (holding), one at a time. */
       /* (A request in flight since an earlier tick may be given up on: its answer is then ignored.) */
       :: atomic { (!inflight[0] || hsent[0] < T) && sends[0] < SENDS ->
            if :: has[0] -> send(0, REN) :: else -> send(0, ACQ) fi }
       :: atomic { (!inflight[1] || hsent[1] < T) && !has[1] && sends[1] < SENDS_B -> send(1, ACQ) }
       /* ... releases: stops using the ID first, then tells the leader. */
       :: atomic { valid(0) ->
            has[0] = false; sends[0] = SENDS; inflight[0] = false; hsent[0] = 0; hkind[0] = 0;
            roomForRequest();
            if
            :: !reqUsed[0] -> req[0].kind = REL; req[0].holder = 0; req[0].lease = hlease[0]; reqUsed[0] = true
            :: else -> req[1].kind = REL; req[1].holder = 0; req[1].lease = hlease[0]; reqUsed[1] = true
            fi;
            printf("t=%d  A stops and releases lease %d\n", T, hlease[0]); hlease[0] = 0; hdeadline[0] = 0 }
       /* The network delivers a request to the leader (which proposes it), in any order. One
          never delivered is lost: it stays until a third message pushes the oldest out. */
       :: atomic { reqUsed[0] && nlog < 3 -> deliver(0) }
       :: atomic { reqUsed[1] && nlog < 3 -> deliver(1) }
       /* An answer reaches its holder, in any order; one never delivered is lost likewise. */
       :: atomic { ansUsed[0] -> receive(0) }
       :: atomic { ansUsed[1] -> receive(1) }
       /* The leader decides an expiry: its deadline passed on its clock. */
       :: atomic { ready && dlSet && LC >= dl && nlog < 3 &&
                   !(nlog > 0 && log[0].kind == EXP) && !(nlog > 1 && log[1].kind == EXP) && !(nlog > 2 && log[2].kind == EXP) ->
            printf("t=%d  leader (clock %d) decides: lease %d expires (deadline %d, renewal %d)\n", T, LC, leaseId, dl, dlRenewal);
            propose(EXP, 0, leaseId, dlRenewal, 0);
            renewedSinceDecision = false }
       /* The oldest entry commits and every replica applies it. */
       :: atomic { ready && nlog > 0 -> applyFirst() }
       /* The leader changes: the new one's log keeps a prefix of the old one's entries. */
       :: atomic { changes < CHANGES ->
            changes++;
            if :: carry = 0 :: carry = 1 :: carry = 2 :: carry = 3 fi;
            if :: carry > nlog -> carry = nlog :: else -> skip fi;
            printf("t=%d  LEADER CHANGE: %d of %d entries survive\n", T, carry, nlog);
            ready = false; dlSet = false; dl = 0; dlRenewal = 0;
            if :: LC = T :: LC = T + 1 :: LC = T + 2 fi;
            sinceGain = 0;
            do
            :: nlog > carry -> nlog--; log[nlog].kind = 0; log[nlog].holder = 0; log[nlog].lease = 0;
                               log[nlog].arg = 0; log[nlog].seq = 0; log[nlog].index = 0; log[nlog].stamp = 0
            :: else -> break
            od;
            nextIndex = (nlog > 0 -> log[nlog - 1].index + 1 : lastApplied + 1);
            /* Its first entry (a no-op) comes after them. */
            propose(0, 0, 0, 0, 0);
            carry = 0 }
       /* The new leader's first entry commits: the carried entries apply, then it is ready. */
       :: atomic { !ready ->
            ready = true;
            do
            :: nlog > 0 && log[0].kind != 0 -> applyFirst()
            :: nlog > 0 && log[0].kind == 0 -> applyFirst(); break
            od;
#ifdef NO_FAILOVER_RESET
            if :: status == ACTIVE -> dlSet = true; dl = stampLC + WAIT; dlRenewal = renewalIndex :: else -> skip fi;
#else
            if :: status == ACTIVE -> dlSet = true; dl = LC + WAIT; dlRenewal = renewalIndex :: else -> skip fi;
#endif
            printf("t=%d  new leader ready (clock %d): deadline %d\n", T, LC, dl) }
       /* Nothing more can happen in the time explored. */
       :: T == TMAX -> break
       fi
    od
}
