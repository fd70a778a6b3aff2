/**
 * Transactions: graph changes as a list of undoable steps that all apply or none do.
 *
 * @module
 */

/** One step of a transaction. */
export interface TransactionAction {
  /** Runs when the whole transaction succeeded. */
  commit?(): void;
  /** Undoes the step; runs in reverse order when the transaction fails. */
  abort?(): void;
  /** Runs last either way, to release resources. */
  clean?(): void;
}

/**
 * Collects steps while a change is made; {@link Transaction.commit} keeps them,
 * {@link Transaction.abort} undoes them in reverse order.
 */
export class Transaction {
  #actions: TransactionAction[] = [];
  #done = false;

  /** Records a step that has already been applied. */
  add(action: TransactionAction): void {
    if (this.#done) throw new Error("Transaction already finished");
    this.#actions.push(action);
  }

  /** Keeps every step. */
  commit(): void {
    this.#finish(true);
  }

  /** Undoes every step, newest first. */
  abort(): void {
    this.#finish(false);
  }

  /** Commits when `ok`, aborts otherwise. */
  finalize(ok: boolean): void {
    this.#finish(ok);
  }

  #finish(ok: boolean): void {
    if (this.#done) return;
    this.#done = true;
    const actions = this.#actions;
    // Both directions run newest first, as QEMU's transactions do.
    if (ok) {
      for (let i = actions.length - 1; i >= 0; i--) actions[i]!.commit?.();
    } else {
      for (let i = actions.length - 1; i >= 0; i--) actions[i]!.abort?.();
    }
    for (let i = actions.length - 1; i >= 0; i--) actions[i]!.clean?.();
    this.#actions = [];
  }

  /**
   * Runs `fn` with a fresh transaction: commits when it returns, aborts and rethrows when it
   * throws.
   */
  static run<T>(fn: (tran: Transaction) => T): T {
    const tran = new Transaction();
    try {
      const result = fn(tran);
      tran.commit();
      return result;
    } catch (err) {
      tran.abort();
      throw err;
    }
  }
}
