//! An intrusive doubly linked list (Linux `list_head` usage): slab pages on a node cache's
//! partial/full lists, pooled areas on a pool's size lists.
//!
//! The list owns nothing: its elements live elsewhere (a slab page, a node of a cache) and are
//! linked through two pointer fields that [`DLinks`] names. Every operation that touches an
//! element is an `unsafe fn` whose contract is that the elements involved are live and either
//! on this list or on none.

use core::ptr::null_mut;

/// The two links an intrusive doubly linked list threads through its elements.
///
/// # Safety
/// Implementors guarantee that `next`/`prev` read exactly the links that `set_next`/`set_prev`
/// write (two distinct pointer fields of the element), and that these four functions access
/// nothing but those two fields. [`DList`] relies on this to keep its head, tail and length in
/// agreement with the elements' links.
pub(crate) unsafe trait DLinks {
    /// The next element (null at the tail).
    ///
    /// # Safety
    /// `p` points to a live element, valid for reads, that no reference currently covers.
    unsafe fn next(p: *mut Self) -> *mut Self;

    /// The previous element (null at the head).
    ///
    /// # Safety
    /// As for [`DLinks::next`].
    unsafe fn prev(p: *mut Self) -> *mut Self;

    /// Sets the next link.
    ///
    /// # Safety
    /// `p` points to a live element, valid for writes, that no reference currently covers.
    unsafe fn set_next(p: *mut Self, n: *mut Self);

    /// Sets the previous link.
    ///
    /// # Safety
    /// As for [`DLinks::set_next`].
    unsafe fn set_prev(p: *mut Self, n: *mut Self);
}

/// `unsafe impl DLinks for $t` over its pointer fields `$next` and `$prev` (two distinct
/// fields of type `*mut $t`).
macro_rules! dlinks {
    ($t:ty, $next:ident, $prev:ident) => {
        // SAFETY: `next`/`prev` read exactly the fields `set_next`/`set_prev` write, two
        // distinct pointer fields, and touch nothing else.
        unsafe impl $crate::list::DLinks for $t {
            unsafe fn next(p: *mut Self) -> *mut Self {
                // SAFETY: `p` is live and valid for reads (this method's contract).
                unsafe { (*p).$next }
            }
            unsafe fn prev(p: *mut Self) -> *mut Self {
                // SAFETY: `p` is live and valid for reads (this method's contract).
                unsafe { (*p).$prev }
            }
            unsafe fn set_next(p: *mut Self, n: *mut Self) {
                // SAFETY: `p` is live and valid for writes (this method's contract).
                unsafe { (*p).$next = n };
            }
            unsafe fn set_prev(p: *mut Self, n: *mut Self) {
                // SAFETY: `p` is live and valid for writes (this method's contract).
                unsafe { (*p).$prev = n };
            }
        }
    };
}
pub(crate) use dlinks;

/// An intrusive doubly linked list of `T`s linked through their [`DLinks`].
///
/// Invariant (kept by the methods below given their contracts): `head`/`tail` are null and `len`
/// is 0, or `head` is the first and `tail` the last of `len` elements chained by their
/// `next`/`prev` links, with `head.prev` and `tail.next` null.
pub(crate) struct DList<T> {
    head: *mut T,
    tail: *mut T,
    len: usize,
}

impl<T> Clone for DList<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DList<T> {}

impl<T: DLinks> DList<T> {
    pub(crate) const EMPTY: DList<T> = DList { head: null_mut(), tail: null_mut(), len: 0 };

    /// The first element (null when empty).
    #[inline]
    pub(crate) fn head(&self) -> *mut T {
        self.head
    }

    /// The last element (null when empty).
    #[inline]
    pub(crate) fn tail(&self) -> *mut T {
        self.tail
    }

    /// Number of elements.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Links `p` in as the first element.
    ///
    /// # Safety
    /// `p` is a live element on no list, and every element of this list is live; none of them
    /// is covered by a reference.
    pub(crate) unsafe fn push_front(&mut self, p: *mut T) {
        // SAFETY: `p` is live and on no list, so its links are ours to set (contract).
        unsafe { T::set_prev(p, null_mut()) };
        // SAFETY: as above.
        unsafe { T::set_next(p, self.head) };
        if self.head.is_null() {
            self.tail = p;
        } else {
            // SAFETY: a non-null head is an element of this list, live by the contract.
            unsafe { T::set_prev(self.head, p) };
        }
        self.head = p;
        self.len += 1;
    }

    /// Links `p` in as the last element.
    ///
    /// # Safety
    /// As for [`DList::push_front`].
    pub(crate) unsafe fn push_back(&mut self, p: *mut T) {
        // SAFETY: `p` is live and on no list, so its links are ours to set (contract).
        unsafe { T::set_next(p, null_mut()) };
        // SAFETY: as above.
        unsafe { T::set_prev(p, self.tail) };
        if self.tail.is_null() {
            self.head = p;
        } else {
            // SAFETY: a non-null tail is an element of this list, live by the contract.
            unsafe { T::set_next(self.tail, p) };
        }
        self.tail = p;
        self.len += 1;
    }

    /// Unlinks `p` and clears its links.
    ///
    /// # Safety
    /// `p` is an element of this list, and every element of this list is live; none of them is
    /// covered by a reference.
    pub(crate) unsafe fn remove(&mut self, p: *mut T) {
        // SAFETY: `p` is a live element of this list (contract).
        let (prev, next) = unsafe { (T::prev(p), T::next(p)) };
        if prev.is_null() {
            self.head = next;
        } else {
            // SAFETY: `p`'s non-null neighbour is an element of this list, live by the contract.
            unsafe { T::set_next(prev, next) };
        }
        if next.is_null() {
            self.tail = prev;
        } else {
            // SAFETY: as above.
            unsafe { T::set_prev(next, prev) };
        }
        // SAFETY: `p` is live (contract) and now off the list.
        unsafe { T::set_next(p, null_mut()) };
        // SAFETY: as above.
        unsafe { T::set_prev(p, null_mut()) };
        self.len -= 1;
    }

    /// Unlinks and returns the head (null when empty).
    ///
    /// # Safety
    /// Every element of this list is live and not covered by a reference.
    pub(crate) unsafe fn pop_front(&mut self) -> *mut T {
        let p = self.head;
        if !p.is_null() {
            // SAFETY: a non-null head is an element of this list; all are live (contract).
            unsafe { self.remove(p) };
        }
        p
    }
}
