; The QEMU side-by-side guest: a boot sector that enters long mode and writes one byte per page.
;
; Build: nasm -f bin -DMODE=1 -DLOW_END=0x40000000 -DHIGH_END=0x100000000 -o guest.img
;   MODE 0 (zero): touch nothing, so every page is a zero page;
;   MODE 1 (fill): add 1 to byte 0 of every page once, then halt (an idle guest, no zero pages);
;   MODE 2 (ab):   add 1 to byte 0 of every page, over and over (a guest that dirties all RAM);
;   MODE 3 (hotset): every page once, then only the HOT_BYTES from 2 MiB on, over and over.
; RAM is [2 MiB, LOW_END) and [4 GiB, HIGH_END) (QEMU pc with max-ram-below-4g=2G); the first
; 2 MiB hold the BIOS, this code and the page tables. 'F' goes to COM1 after the first pass.

bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    in al, 0x92                 ; A20 on (fast gate)
    or al, 2
    out 0x92, al
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1                   ; protected mode
    mov cr0, eax
    jmp 0x08:protected

bits 32
protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7c00
    mov edi, 0x10000            ; PML4 0x10000, PDPT 0x11000, 8 PDs from 0x12000
    mov ecx, 10 * 1024
    xor eax, eax
    rep stosd
    mov dword [0x10000], 0x11003
    mov edi, 0x11000
    mov eax, 0x12003
    mov ecx, 8
.pdpt:
    mov [edi], eax
    add eax, 0x1000
    add edi, 8
    loop .pdpt
    mov edi, 0x12000            ; identity map of 8 GiB in 2 MiB pages
    mov eax, 0x83               ; present, writable, large page
    xor edx, edx
    mov ecx, 8 * 512
.pd:
    mov [edi], eax
    mov [edi + 4], edx
    add eax, 0x200000
    adc edx, 0
    add edi, 8
    loop .pd
    mov eax, cr4
    or eax, 1 << 5              ; PAE
    mov cr4, eax
    mov eax, 0x10000
    mov cr3, eax
    mov ecx, 0xc0000080         ; EFER.LME
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31             ; paging: long mode
    mov cr0, eax
    jmp 0x18:long_mode

bits 64
long_mode:
    mov rsp, 0x7c00
%if MODE > 0
    call sweep
%endif
    mov dx, 0x3f8
    mov al, 'F'
    out dx, al
%if MODE == 2
.forever:
    call sweep
    jmp .forever
%endif
%if MODE == 3
%ifndef HOT_BYTES
%define HOT_BYTES 0x1000000
%endif
.hot:
    mov rdi, 0x200000
    mov rsi, 0x200000 + HOT_BYTES
    call pages
    jmp .hot
%endif
.halt:
    hlt
    jmp .halt

sweep:
    mov rdi, 0x200000
    mov rsi, LOW_END
    call pages
    mov rdi, 0x100000000
    mov rsi, HIGH_END
    ; fall through
pages:                          ; add 1 to byte 0 of each page in [rdi, rsi)
    cmp rdi, rsi
    jae .done
.next:
    inc byte [rdi]
    add rdi, 4096
    cmp rdi, rsi
    jb .next
.done:
    ret

gdt:
    dq 0
    dq 0x00cf9a000000ffff       ; 0x08: 32-bit code
    dq 0x00cf92000000ffff       ; 0x10: data
    dq 0x00af9a000000ffff       ; 0x18: 64-bit code
gdt_descriptor:
    dw gdt_descriptor - gdt - 1
    dd gdt

    times 510 - ($ - $$) db 0
    dw 0xaa55
