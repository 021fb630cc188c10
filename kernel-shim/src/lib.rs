//! The incoming side of the handover.
#![no_std]
