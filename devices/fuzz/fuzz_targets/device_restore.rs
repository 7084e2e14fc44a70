//! Every device's validating restore on arbitrary state (postcard-decoded from the input, as a
//! snapshot file would hold it): `restore` and `restore_in_place` must agree on what they accept;
//! a rejected state leaves the live device untouched; an accepted one saves to a state that is
//! accepted again and saves identically (restore is idempotent).
#![no_main]

use devices_fuzz::restore::check_restore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_restore(data);
});
